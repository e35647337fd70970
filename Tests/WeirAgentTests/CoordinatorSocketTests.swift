import Crypto
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Testing
@testable import WeirAgent

/// The agent's coordinator WebSocket against servers that misbehave: one that accepts and says nothing, one that
/// upgrades and then never answers a ping, one that refuses with a status and reason. Loopback only.
@Suite struct CoordinatorSocketTests {
    /// A loopback server whose connections get `configure`; returns its port.
    static func server(_ configure: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) async throws -> (any Channel, Int) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer(configure)
            .bind(host: "127.0.0.1", port: 0).get()
        return (channel, channel.localAddress?.port ?? 0)
    }

    static func connect(port: Int, handshakeTimeout: TimeAmount = .seconds(5), pingEvery: Duration = .seconds(20)) async throws -> Bool {
        try await CoordinatorSocket.connect(
            url: "ws://127.0.0.1:\(port)/api/v1/agent/connect", headers: [], tls: .makeClientConfiguration(), maxMessageSize: 1 << 20,
            pingEvery: pingEvery, handshakeTimeout: handshakeTimeout
        ) { messages, _ in
            while try await messages.next() != nil {}
            return true
        }
    }

    @Test("a server that accepts and never answers the upgrade is given up after the handshake timeout")
    func stalledHandshake() async throws {
        let (server, port) = try await Self.server { $0.eventLoop.makeSucceededVoidFuture() }
        defer { server.close(promise: nil) }
        let started = ContinuousClock.now
        await #expect(throws: (any Error).self) { _ = try await Self.connect(port: port, handshakeTimeout: .milliseconds(300)) }
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test("a coordinator that upgrades and then never answers a ping is closed after two ping periods")
    func silentAfterUpgrade() async throws {
        let (server, port) = try await Self.server { channel in
            // Upgrades and then drops every frame: no pong, no close.
            let upgrader = NIOWebSocketServerUpgrader(
                shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
                upgradePipelineHandler: { channel, _ in channel.pipeline.addHandler(DropFrames()) })
            return channel.pipeline.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        }
        defer { server.close(promise: nil) }
        await #expect(throws: CoordinatorSocket.Failure.silent(seconds: 0)) {
            _ = try await Self.connect(port: port, pingEvery: .milliseconds(200))
        }
    }

    @Test("a message sent in the same segment as the 101 is read (the HTTP decoder forwards what follows the response)")
    func messageInTheUpgradeSegment() async throws {
        let (server, port) = try await Self.server { channel in
            channel.pipeline.addHandler(UpgradeAndGreetInOneWrite())
        }
        defer { server.close(promise: nil) }
        let first = try await CoordinatorSocket.connect(
            url: "ws://127.0.0.1:\(port)/", headers: [], tls: .makeClientConfiguration(), maxMessageSize: 1 << 20, handshakeTimeout: .seconds(5)
        ) { messages, _ in try await messages.next() }
        #expect(first == "welcome")
    }

    @Test("a refused upgrade gives its status and the JSON reason")
    func refusalReason() async throws {
        let (server, port) = try await Self.server { channel in
            channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Refuse()) }
        }
        defer { server.close(promise: nil) }
        await #expect(throws: CoordinatorSocket.Failure.refused(status: 401, reason: "agent \"a\" was revoked")) {
            _ = try await Self.connect(port: port)
        }
    }
}

private final class DropFrames: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

private final class Refuse: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        let body = #"{"error":"agent \"a\" was revoked"}"#
        context.write(wrapOutboundOut(.head(HTTPResponseHead(
            version: .http1_1, status: .unauthorized, headers: ["Content-Length": "\(body.utf8.count)", "Connection": "close"]))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}

/// Answers the upgrade request by hand: the 101 and an unmasked text frame in one write, as a server may.
private final class UpgradeAndGreetInOneWrite: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var request = ""

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        request += String(buffer: unwrapInboundIn(data))
        guard request.contains("\r\n\r\n"), let line = request.split(separator: "\r\n").first(where: { $0.lowercased().hasPrefix("sec-websocket-key:") })
        else { return }
        let key = line.split(separator: ":", maxSplits: 1)[1].trimmingCharacters(in: .whitespaces)
        let accept = Data(Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))).base64EncodedString()
        var out = ByteBuffer(string: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \(accept)\r\n\r\n")
        out.writeBytes([0x81, 7] + Array("welcome".utf8))
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        request = ""
    }
}
