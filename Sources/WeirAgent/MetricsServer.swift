import NIOCore
import NIOHTTP1
import NIOPosix
import WeirCore

/// Serves `/metrics` (Prometheus text format) and `/healthz` over plain HTTP/1.1.
public final class MetricsServer: Sendable {
    private let metrics: WeirMetrics
    private let group: any EventLoopGroup

    public init(metrics: WeirMetrics, group: any EventLoopGroup) {
        self.metrics = metrics
        self.group = group
    }

    /// Binds and serves until the returned channel is closed.
    public func bind(_ address: BindAddress) async throws -> any Channel {
        let metrics = self.metrics
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Out of descriptors, a scrape must not make the listener retry its accept at full speed.
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(AcceptFailureReport.pausing(channel)) }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
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
