import NIOCore
import NIOHTTP2
import WeirCore

/// Pings the peer over an idle or busy carrier alike: the answer's round trip goes to whoever measures
/// latency at the head of the pipeline (connect.relay), and a peer that stops answering for two intervals
/// gets its carrier closed, so new connections dial a fresh one instead of waiting on a dead peer.
/// A GOAWAY from the peer (it is reloading or stopping) marks the carrier as taking no new streams.
final class MuxKeepalive: ChannelInboundHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let interval: TimeAmount
    private let goingAway: @Sendable () -> Void
    private var task: RepeatedTask?
    /// When the unanswered ping was sent; its data is that time in nanoseconds.
    private var outstanding: NIODeadline?

    init(interval: TimeAmount, goingAway: @escaping @Sendable () -> Void) {
        self.interval = interval
        self.goingAway = goingAway
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard task == nil else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        // The first ping goes out at once: the carrier's latency is known before its first interval ends.
        task = context.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: interval) { _ in
            let (handler, context) = loopBound.value
            handler.tick(context)
        }
    }

    private func tick(_ context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        if let outstanding, now - outstanding >= interval * 2 {
            context.close(promise: nil)
            return
        }
        guard outstanding == nil else { return }
        outstanding = now
        let data = HTTP2PingData(withInteger: now.uptimeNanoseconds)
        context.writeAndFlush(wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .ping(data, ack: false))), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.payload {
        case .ping(let ping, ack: true):
            if let outstanding, ping.integer == outstanding.uptimeNanoseconds {
                self.outstanding = nil
                let seconds = Double((NIODeadline.now() - outstanding).nanoseconds) / 1e9
                context.triggerUserOutboundEvent(MeasuredRoundTrip(seconds: seconds), promise: nil)
            }
        case .goAway:
            goingAway()
        default:
            break
        }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        task?.cancel()
        task = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        task?.cancel()
        task = nil
    }
}
