import NIOCore

/// Closes a forwarded connection on which nothing moved, in either direction, for `timeout` (a listener's
/// `idle_timeout`): bytes from the client are reads here, bytes to it writes. Nearest the socket, added once
/// the connection is forwarding; counted as `idle_timeout` under the listener's stage. Touched only on its
/// channel's loop.
public final class IdleTimeout: ChannelDuplexHandler, RemovableChannelHandler, @unchecked Sendable {
    public typealias InboundIn = NIOAny
    public typealias OutboundIn = NIOAny

    private let timeout: TimeAmount
    private let stage: String
    private let metrics: PipelineMetrics
    private var lastActivity = NIODeadline.now()
    private var timer: Scheduled<Void>?

    public init(timeout: TimeAmount, stage: String, metrics: PipelineMetrics) {
        self.timeout = timeout
        self.stage = stage
        self.metrics = metrics
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        lastActivity = .now()
        schedule(context, at: lastActivity + timeout)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastActivity = .now()
        context.fireChannelRead(data)
    }

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        lastActivity = .now()
        context.write(data, promise: promise)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    /// One timer at a time: when it fires early (there was activity since), it is set again for the rest.
    private func schedule(_ context: ChannelHandlerContext, at deadline: NIODeadline) {
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            let due = self.lastActivity + self.timeout
            if due > .now() {
                self.schedule(context, at: due)
                return
            }
            self.timer = nil
            self.metrics.error(stage: self.stage, reason: "idle_timeout")
            context.close(promise: nil)
        }
    }
}
