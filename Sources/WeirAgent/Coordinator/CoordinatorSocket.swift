import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Synchronization

/// The agent's WebSocket to the coordinator, built on SwiftNIO's HTTP upgrade and WebSocket codecs.
///
/// Two things a WebSocket client library did not allow: dialing an IP literal (`wss://10.0.0.5:8443`), where
/// TLS sends no SNI and NIOSSL checks the address against the certificate's IP SANs; and reading a refused
/// upgrade's status and reason, so an agent can say that it was revoked rather than "upgrade failed".
enum CoordinatorSocket {
    enum Failure: Error, CustomStringConvertible, Equatable {
        case invalidURL(String)
        /// The coordinator answered the upgrade with an HTTP status and (JSON) reason.
        case refused(status: Int, reason: String)
        /// Nothing arrived for twice the ping period.
        case silent(seconds: Int)

        var description: String {
            switch self {
            case .invalidURL(let url): return "\"\(url)\" is not a ws:// or wss:// URL"
            case .refused(let status, let reason): return "the coordinator refused the connection (HTTP \(status)): \(reason)"
            case .silent(let seconds): return "nothing from the coordinator for \(seconds) s"
            }
        }
    }

    struct Endpoint: Equatable {
        var host: String
        var port: Int
        var path: String
        var secure: Bool
        /// A literal address gets no SNI (RFC 6066 forbids it); the certificate must name the address.
        var isAddressLiteral: Bool { (try? SocketAddress(ipAddress: host, port: 0)) != nil }

        init(url text: String) throws(Failure) {
            guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased(), scheme == "ws" || scheme == "wss",
                var host = components.host, !host.isEmpty
            else { throw .invalidURL(text) }
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            self.host = host
            secure = scheme == "wss"
            port = components.port ?? (secure ? 443 : 80)
            path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
            if let query = components.percentEncodedQuery { path += "?" + query }
        }

        var hostHeader: String {
            let name = host.contains(":") ? "[\(host)]" : host
            return port == (secure ? 443 : 80) ? name : "\(name):\(port)"
        }
    }

    /// Text messages as they arrive. Pings are answered and a close from the coordinator is echoed on the way.
    final class Messages {
        fileprivate var frames: NIOAsyncChannelInboundStream<WebSocketFrame>.AsyncIterator
        fileprivate let outbound: Outbound
        fileprivate let lastHeard: LastHeard

        fileprivate init(_ inbound: NIOAsyncChannelInboundStream<WebSocketFrame>, outbound: Outbound, lastHeard: LastHeard) {
            frames = inbound.makeAsyncIterator()
            self.outbound = outbound
            self.lastHeard = lastHeard
        }

        /// The next text message; nil when the connection ended. Binary messages are skipped.
        func next() async throws -> String? {
            while let frame = try await frames.next() {
                lastHeard.now()
                switch frame.opcode {
                case .text:
                    return String(buffer: frame.unmaskedData)
                case .ping:
                    try await outbound.write(.pong, frame.unmaskedData)
                case .connectionClose:
                    var data = frame.unmaskedData
                    let code = data.readWebSocketErrorCode() ?? .normalClosure
                    await outbound.close(code, reason: "")
                    return nil
                default:
                    continue
                }
            }
            return nil
        }
    }

    /// Writes from any task; every frame the client sends is masked (RFC 6455 5.3).
    struct Outbound: Sendable {
        fileprivate let writer: NIOAsyncChannelOutboundWriter<WebSocketFrame>

        func send(_ text: String) async throws { try await write(.text, ByteBuffer(string: text)) }

        func close(_ code: WebSocketErrorCode, reason: String) async {
            var data = ByteBuffer()
            data.write(webSocketErrorCode: code)
            data.writeString(String(reason.utf8.prefix(120)) ?? "")
            try? await write(.connectionClose, data)
            writer.finish()
        }

        fileprivate func write(_ opcode: WebSocketOpcode, _ data: ByteBuffer) async throws {
            try await writer.write(WebSocketFrame(fin: true, opcode: opcode, maskKey: .random(), data: data))
        }
    }

    fileprivate final class LastHeard: Sendable {
        private let instant = Mutex(ContinuousClock.now)
        func now() { instant.withLock { $0 = .now } }
        var elapsed: Duration { ContinuousClock.now - instant.withLock { $0 } }
    }

    private enum Upgrade: Sendable {
        case webSocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>)
        case refused(NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>)
    }

    /// Dials, upgrades and runs `session` until it returns or the connection ends; a ping every `pingEvery`,
    /// and a connection that hears nothing for twice that is closed.
    static func connect<Result: Sendable>(
        url: String, headers: [(String, String)], tls: TLSConfiguration, maxMessageSize: Int, pingEvery: Duration = .seconds(20),
        connectTimeout: TimeAmount = .seconds(10), handshakeTimeout: TimeAmount = .seconds(30), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        session: @escaping @Sendable (Messages, Outbound) async throws -> Result
    ) async throws -> Result {
        let endpoint = try Endpoint(url: url)
        let context = endpoint.secure ? try NIOSSLContext(configuration: tls) : nil
        var requestHeaders = HTTPHeaders([("Host", endpoint.hostHeader)])
        requestHeaders.add(contentsOf: headers)
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.path, headers: requestHeaders)

        let upgrade = try await ClientBootstrap(group: group)
            .connectTimeout(connectTimeout)
            .connect(host: endpoint.host, port: endpoint.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let context {
                        let handler = try NIOSSLClientHandler(context: context, serverHostname: endpoint.isAddressLiteral ? nil : endpoint.host)
                        try channel.pipeline.syncOperations.addHandler(handler)
                    }
                    let webSocket = NIOTypedWebSocketClientUpgrader<Upgrade>(maxFrameSize: maxMessageSize) { channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            try channel.pipeline.syncOperations.addHandler(NIOWebSocketFrameAggregator(
                                minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1 << 16, maxAccumulatedFrameSize: maxMessageSize))
                            return .webSocket(try NIOAsyncChannel(wrappingChannelSynchronously: channel))
                        }
                    }
                    var configuration = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: .init(
                        upgradeRequestHead: head, upgraders: [webSocket],
                        notUpgradingCompletionHandler: { channel in
                            channel.eventLoop.makeCompletedFuture { .refused(try NIOAsyncChannel(wrappingChannelSynchronously: channel)) }
                        }))
                    // The coordinator's welcome can arrive in the same read as its 101: the HTTP decoder must pass
                    // what follows the response on to the WebSocket decoder, not drop it.
                    configuration.leftOverBytesStrategy = .forwardBytes
                    let upgrade = try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: configuration)
                    // TLS, the upgrade and a refusal's body must finish in time: a server that accepts and stalls
                    // would otherwise hold this dial (and the agent's reconnect loop) forever.
                    let deadline = channel.eventLoop.scheduleTask(in: handshakeTimeout) { channel.close(promise: nil) }
                    upgrade.whenSuccess { if case .webSocket = $0 { deadline.cancel() } }
                    return upgrade
                }
            }
            .get()

        switch upgrade {
        case .refused(let http):
            throw try await refusal(http)
        case .webSocket(let channel):
            return try await channel.executeThenClose { inbound, writer in
                let outbound = Outbound(writer: writer)
                let lastHeard = LastHeard()
                return try await withThrowingTaskGroup(of: Result?.self) { group in
                    group.addTask {
                        while true {
                            try await Task.sleep(for: pingEvery)
                            if lastHeard.elapsed > pingEvery * 2 {
                                throw Failure.silent(seconds: Int((pingEvery * 2).components.seconds))
                            }
                            try await outbound.write(.ping, ByteBuffer())
                        }
                    }
                    group.addTask { try await session(Messages(inbound, outbound: outbound, lastHeard: lastHeard), outbound) }
                    defer { group.cancelAll() }
                    while let finished = try await group.next() {
                        if let result = finished { return result }
                    }
                    throw CancellationError()
                }
            }
        }
    }

    /// The refused upgrade's status and reason: the JSON `error`, or the body's first line, or the status phrase.
    private static func refusal(_ http: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>) async throws -> Failure {
        try await http.executeThenClose { inbound, _ in
            var status = HTTPResponseStatus.badRequest
            var body = ByteBuffer()
            for try await part in inbound {
                switch part {
                case .head(let head): status = head.status
                case .body(var chunk): if body.readableBytes < 4096 { body.writeBuffer(&chunk) }
                case .end: break
                }
                if case .end = part { break }
            }
            let text = String(buffer: body)
            struct ErrorBody: Decodable { let error: String }
            let reason = (try? JSONDecoder().decode(ErrorBody.self, from: Data(text.utf8)))?.error
                ?? text.split(separator: "\n").first.map(String.init) ?? status.reasonPhrase
            return Failure.refused(status: Int(status.code), reason: reason.isEmpty ? status.reasonPhrase : reason)
        }
    }
}
