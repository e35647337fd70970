import Foundation
import NIOCore
import NIOHTTP1
import WeirCore

/// One HTTP proxy client: a `CONNECT host:port` request, optional `Proxy-Authorization: Basic`, then the
/// tunnel. Anything but CONNECT is answered 405; answers are written as bytes (no body framing to get wrong
/// around a tunnel). Reads are requested one at a time (autoRead is off) until the request is complete.
final class HTTPConnectNegotiation: ReadsUntilDecided, RemovableChannelHandler, StreamNegotiation, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    private let credentials: ProxyCredentials?
    private let policy: DestinationPolicy
    private let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .forwardBytes))
    private var requested: Destination?
    private var destination: EventLoopPromise<Destination>?
    private var context: ChannelHandlerContext?
    private(set) var decided = false

    init(credentials: ProxyCredentials?, policy: DestinationPolicy) {
        self.credentials = credentials
        self.policy = policy
    }

    // MARK: StreamNegotiation

    func begin(on channel: any Channel) -> EventLoopFuture<Destination> {
        let promise = channel.eventLoop.makePromise(of: Destination.self)
        destination = promise
        return install([decoder, self], on: channel, for: promise)
    }

    func succeed(target: any Channel) {
        guard let context else { return }
        context.writeAndFlush(wrapOutboundOut(Self.response("200 Connection established", allocator: context.channel.allocator)), promise: nil)
        // This handler first, then the decoder, which hands on what the client sent after its request.
        context.pipeline.syncOperations.handOver(from: context, then: decoder)
    }

    func fail(_ reason: NegotiationFailure) {
        switch reason {
        case .notAllowed: answerAndClose("403 Forbidden")
        case .unreachable: answerAndClose("502 Bad Gateway")
        case .unknownHost: answerAndClose("502 Bad Gateway")
        }
    }

    // MARK: ChannelInboundHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        readIfActive(context)
    }

    /// The context refers back to this handler: kept past removal, the two would keep each other (and the
    /// connection's buffers) alive after the connection closed.
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            requested = check(head)
        case .body:
            break
        case .end:
            decided = true
            if let requested {
                destination?.succeed(requested)
                destination = nil
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !decided { answerAndClose("400 Bad Request") }
        refuse(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        refuse(ClientWentAway())
        context.fireChannelInactive()
        // Leave before the closing channel removes the decoder, which hands its leftover bytes (raw, not
        // request parts) to whatever follows it.
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    // MARK: Steps

    /// The destination of an acceptable request; otherwise answers (and the negotiation fails).
    private func check(_ head: HTTPRequestHead) -> Destination? {
        guard head.method == .CONNECT else {
            refuse(HTTPProxyRefused(reason: "\(head.method) is not CONNECT"))
            answerAndClose("405 Method Not Allowed", headers: ["Allow: CONNECT"])
            return nil
        }
        if let credentials {
            guard let (username, password) = Self.basicCredentials(head.headers["proxy-authorization"].first),
                credentials.accepts(username: username, password: password)
            else {
                refuse(HTTPProxyRefused(reason: "missing or wrong proxy credentials"))
                answerAndClose("407 Proxy Authentication Required", headers: ["Proxy-Authenticate: Basic realm=\"weir\""])
                return nil
            }
        }
        guard let target = try? HostPort.parse(head.uri) else {
            refuse(HTTPProxyRefused(reason: "CONNECT target \"\(head.uri)\" is not host:port"))
            answerAndClose("400 Bad Request")
            return nil
        }
        let wanted = Destination(host: target.host, port: target.port)
        guard policy.permits(wanted) else {
            refuse(HTTPProxyRefused(reason: "\(wanted) is not allowed"))
            answerAndClose("403 Forbidden")
            return nil
        }
        return wanted
    }

    /// `Basic base64(user:password)`.
    static func basicCredentials(_ header: String?) -> (String, String)? {
        guard let header, header.lowercased().hasPrefix("basic "),
            let data = Data(base64Encoded: String(header.dropFirst(6)).trimmingCharacters(in: .whitespaces))
        else { return nil }
        let text = String(decoding: data, as: UTF8.self)
        guard let colon = text.firstIndex(of: ":") else { return nil }
        return (String(text[..<colon]), String(text[text.index(after: colon)...]))
    }

    static func response(_ status: String, headers: [String] = [], allocator: ByteBufferAllocator) -> ByteBuffer {
        let lines = ["HTTP/1.1 \(status)"] + headers + (status.hasPrefix("200") ? [] : ["Content-Length: 0", "Connection: close"])
        return allocator.buffer(string: lines.joined(separator: "\r\n") + "\r\n\r\n")
    }

    private func refuse(_ error: any Error) {
        decided = true
        destination?.fail(error)
        destination = nil
    }

    private func answerAndClose(_ status: String, headers: [String] = []) {
        guard let context else { return }
        decided = true
        context.writeAndFlush(wrapOutboundOut(Self.response(status, headers: headers, allocator: context.channel.allocator)))
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}

struct HTTPProxyRefused: Error, CustomStringConvertible {
    let reason: String
    var description: String { "HTTP proxy: \(reason)" }
}
