import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// Joins two channels into a full-duplex byte pipe. The two usually share an event loop; a stream of a
/// multiplexed carrier runs on the carrier's loop, so the pair also works across two loops.
///
/// Backpressure: a side reads only while its partner is writable, so a slow reader stalls the fast writer
/// instead of making the agent buffer without limit. Across loops, bytes handed to the partner's loop but
/// not yet written there count against it too. Half-close: end-of-input on one side shuts down the
/// partner's output after everything queued for it has been written.
///
/// Each handler's state is touched only on its own channel's loop; what one side asks of the other runs on
/// the other's loop (directly when that is the same loop), in the order it was asked.
public final class GlueHandler: @unchecked Sendable {
    private var partner: GlueHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private let channel: any Channel
    private let sameLoop: Bool
    /// Bytes read on this side, i.e. forwarded in this side's direction.
    private let bytesRead: Counter
    /// The destination's slot and which of its directions this side reads, when the client named one.
    private let destination: DestinationTraffic.Slot?
    private let readsClient: Bool
    /// Across loops: bytes the partner read and handed over that this side has not yet written.
    private let handedOver = NIOLockedValueBox(0)
    /// How many handed-over bytes a side may have on their way before its partner stops reading.
    private static let handOverLimit = 256 << 10

    private init(channel: any Channel, sameLoop: Bool, bytesRead: Counter, destination: DestinationTraffic.Slot?, readsClient: Bool) {
        self.channel = channel
        self.sameLoop = sameLoop
        self.bytesRead = bytesRead
        self.destination = destination
        self.readsClient = readsClient
    }

    /// A handler for the client channel and one for the target channel, joined.
    /// `destination`: where the bytes are counted per destination too, when the client named one.
    public static func matchedPair(
        client: any Channel, target: any Channel, metrics: PipelineMetrics, destination: DestinationTraffic.Slot? = nil
    ) -> (client: GlueHandler, target: GlueHandler) {
        let sameLoop = client.eventLoop === target.eventLoop
        let clientSide = GlueHandler(channel: client, sameLoop: sameLoop, bytesRead: metrics.bytesIn, destination: destination, readsClient: true)
        let targetSide = GlueHandler(channel: target, sameLoop: sameLoop, bytesRead: metrics.bytesOut, destination: destination, readsClient: false)
        clientSide.partner = targetSide
        targetSide.partner = clientSide
        return (clientSide, targetSide)
    }

    /// Runs `body` with the partner on the partner's loop.
    private func withPartner(_ body: @escaping @Sendable (GlueHandler) -> Void) {
        guard let partner else { return }
        if sameLoop {
            body(partner)
        } else {
            partner.channel.eventLoop.execute { body(partner) }
        }
    }
}

extension GlueHandler {
    private func partnerWrite(_ data: ByteBuffer) {
        context?.write(NIOAny(data), promise: nil)
        guard !sameLoop else { return }
        let before = handedOver.withLockedValue { value in
            defer { value -= data.readableBytes }
            return value
        }
        if before >= Self.handOverLimit, before - data.readableBytes < Self.handOverLimit {
            withPartner { $0.partnerBecameWritable() }
        }
    }

    private func partnerFlush() { context?.flush() }

    /// Read from the partner's loop: `isWritable` is safe to read from any thread.
    private var writable: Bool {
        channel.isWritable && (sameLoop || handedOver.withLockedValue { $0 } < Self.handOverLimit)
    }

    private func partnerBecameWritable() {
        if pendingRead, partner?.writable ?? false {
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
        guard let context else {
            // Not in place yet (the other side's setup runs on another loop) or already removed.
            if mode == .all { channel.close(promise: nil) }
            return
        }
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
        let buffer = unwrapInboundIn(data)
        bytesRead.increment(by: Int64(buffer.readableBytes))
        if let destination {
            if readsClient { destination.addIn(buffer.readableBytes) } else { destination.addOut(buffer.readableBytes) }
        }
        if sameLoop {
            partner?.partnerWrite(buffer)
        } else if let partner {
            partner.handedOver.withLockedValue { $0 += buffer.readableBytes }
            partner.channel.eventLoop.execute { partner.partnerWrite(buffer) }
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        withPartner { $0.partnerFlush() }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        withPartner { $0.partnerClosed() }
        context.fireChannelInactive()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, case .inputClosed = event {
            withPartner { $0.partnerInputClosed() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            withPartner { $0.partnerBecameWritable() }
        }
        context.fireChannelWritabilityChanged()
    }

    public func read(context: ChannelHandlerContext) {
        if partner?.writable ?? false {
            context.read()
        } else {
            pendingRead = true
        }
    }
}
