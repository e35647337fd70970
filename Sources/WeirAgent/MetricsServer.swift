import NIOCore
import NIOHTTP1
import NIOPosix
import WeirCore

/// Serves `/metrics` (Prometheus text format) and `/healthz` over plain HTTP/1.1.
///
/// The port is often open to more than the Prometheus server (a `0.0.0.0` bind, health checks of a load
/// balancer): what a client can make it hold is bounded like a listener's — at most `maxConnections` open
/// (more are closed at once), a request due within `requestTimeout`, a kept-alive connection idle at most
/// `idleTimeout` (longer than any usual scrape interval, so Prometheus keeps its connection).
public final class MetricsServer: Sendable {
    private let metrics: WeirMetrics
    private let group: any EventLoopGroup
    private let connections = ConnectionBudget(limit: MetricsServer.maxConnections)

    static let maxConnections = 256
    static let requestTimeout: TimeAmount = .seconds(10)
    static let idleTimeout: TimeAmount = .seconds(120)

    public init(metrics: WeirMetrics, group: any EventLoopGroup) {
        self.metrics = metrics
        self.group = group
    }

    /// Binds and serves until the returned channel is closed.
    public func bind(_ address: BindAddress) async throws -> any Channel {
        let metrics = self.metrics
        let connections = self.connections
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Out of descriptors, a scrape must not make the listener retry its accept at full speed.
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AcceptFailureReport.pausing(channel)) }
            }
            .childChannelInitializer { channel in
                guard connections.take() else { return channel.close() }
                channel.closeFuture.whenComplete { _ in connections.release() }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPConnectionDeadline(requestTimeout: Self.requestTimeout, idleTimeout: Self.idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(metrics: metrics))
                }
            }
            .bind(to: address.socketAddress())
            .get()
    }
}

final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let metrics: WeirMetrics
    private var request: HTTPRequestHead?

    init(metrics: WeirMetrics) { self.metrics = metrics }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            request = head
        case .body:
            break
        case .end:
            guard let head = request else { return }
            request = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
        let plain = "text/plain; charset=utf-8"
        switch (head.method, path) {
        case (.GET, "/metrics"), (.HEAD, "/metrics"):
            // Scrape-time collectors read kernel maps and may write hundreds of thousands of samples:
            // render away from the event loop, which forwards traffic.
            let metrics = self.metrics
            let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
            context.eventLoop.makeFutureWithTask { metrics.render() }.whenSuccess { body in
                bound.value.handler.send(.ok, "text/plain; version=0.0.4; charset=utf-8", body, for: head, context: bound.value.context)
            }
        case (.GET, "/healthz"), (.HEAD, "/healthz"):
            // 503 with one line per problem; the agent keeps forwarding, but someone has to act.
            let problems = metrics.health.lines
            if problems.isEmpty {
                send(.ok, plain, Array("ok\n".utf8), for: head, context: context)
            } else {
                send(.serviceUnavailable, plain, Array(("unhealthy\n" + problems.joined(separator: "\n") + "\n").utf8), for: head, context: context)
            }
        case (_, "/metrics"), (_, "/healthz"):
            send(.methodNotAllowed, plain, Array("method not allowed\n".utf8), for: head, context: context)
        default:
            send(.notFound, plain, Array("not found\n".utf8), for: head, context: context)
        }
    }

    private func send(_ status: HTTPResponseStatus, _ contentType: String, _ body: [UInt8], for head: HTTPRequestHead, context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.count)")
        let keepAlive = head.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}

/// Closes an HTTP/1 connection whose next request does not arrive whole in time: its head and body within
/// `requestTimeout` of the accept or of the previous response, or a kept-alive connection that sends
/// nothing for `idleTimeout`. Bytes that do not complete a head do not reset the clock, so a client that
/// trickles a request, or connects and says nothing, is closed like one that stalls.
final class HTTPConnectionDeadline: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let requestTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private var deadline = ChannelDeadline()

    init(requestTimeout: TimeAmount, idleTimeout: TimeAmount) {
        self.requestTimeout = requestTimeout
        self.idleTimeout = idleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) { arm(requestTimeout, context: context) }

    func handlerRemoved(context: ChannelHandlerContext) { deadline.cancel() }

    func channelInactive(context: ChannelHandlerContext) {
        deadline.cancel()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: arm(requestTimeout, context: context)  // the body and end are due within the timeout
        case .body: break
        case .end: deadline.cancel()  // answering: the server's time, not the client's
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { arm(idleTimeout, context: context) }
        context.write(data, promise: promise)
    }

    private func arm(_ timeout: TimeAmount, context: ChannelHandlerContext) {
        deadline.arm(timeout, on: context) { context.close(promise: nil) }
    }
}
