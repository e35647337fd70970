import NIOCore
import Prometheus

/// Joins two channels on one event loop into a full-duplex byte pipe.
///
/// Backpressure: a side reads only while its partner is writable, so a slow reader stalls the fast writer
/// instead of making the agent buffer without limit. Half-close: end-of-input on one side shuts down the
/// partner's output after everything queued for it has been written.
public final class GlueHandler {
    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    /// Bytes read on this side, i.e. forwarded in this side's direction.
    private let bytesRead: Counter

    private init(bytesRead: Counter) { self.bytesRead = bytesRead }

    /// A handler for the client channel and one for the target channel, joined.
    public static func matchedPair(metrics: PipelineMetrics) -> (client: GlueHandler, target: GlueHandler) {
        let client = GlueHandler(bytesRead: metrics.bytesIn)
        let target = GlueHandler(bytesRead: metrics.bytesOut)
        client.partner = target
        target.partner = client
        return (client, target)
    }
}

extension GlueHandler {
    private func partnerWrite(_ data: NIOAny) { context?.write(data, promise: nil) }

    private func partnerFlush() { context?.flush() }

    private var partnerWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    /// The partner's input ended: half-close this side's output.
    private func partnerInputClosed() { closeAfterQueuedWrites(mode: .output) }

    /// The partner is gone: close this side.
    private func partnerClosed() { closeAfterQueuedWrites(mode: .all) }

    /// Closes once every write queued for this side is out. Closing at once would drop the tail of a
    /// transfer whose sender closed right after writing it — also for a half-close, because NIO escalates
    /// an output shutdown to a full close (dropping queued writes) when input is already shut.
    private func closeAfterQueuedWrites(mode: CloseMode) {
        guard let context else { return }
        let channel = context.channel
        context.writeAndFlush(NIOAny(ByteBuffer())).whenComplete { _ in
            channel.close(mode: mode, promise: nil)
        }
    }
}

extension GlueHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.partner = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bytesRead.increment(by: Int64(unwrapInboundIn(data).readableBytes))
        partner?.partnerWrite(data)
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        partner?.partnerClosed()
        context.fireChannelInactive()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            partner?.partnerInputClosed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            partner?.partnerBecameWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    public func read(context: ChannelHandlerContext) {
        if partner?.partnerWritable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }
}
