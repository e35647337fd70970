import NIOConcurrencyHelpers
import NIOCore
import WeirCore

/// A token bucket used by one connection, or shared (behind a lock) by all connections of a pipeline.
final class SharedTokenBucket: StreamPacer {
    private let bucket: NIOLockedValueBox<TokenBucket>

    init(_ bucket: TokenBucket) { self.bucket = NIOLockedValueBox(bucket) }

    func consume(_ bytes: Int) { bucket.withLockedValue { $0.consume(bytes, now: .now()) } }

    func delayBeforeRead() -> TimeAmount? { bucket.withLockedValue { $0.delayBeforeRead(now: .now()) } }

    func admit(_ bytes: Int) -> Bool { bucket.withLockedValue { $0.admit(bytes, now: .now()) } }
}

/// Holds back reads on one side of a connection while its bucket is in debt.
///
/// It sits between the socket and the glue: it counts what is read, and delays the glue's next `read()`
/// until the bucket has refilled. Because the socket is not read, the kernel's receive window closes and the
/// sender slows down: the limit is enforced end to end, with no buffering in the agent.
final class BandwidthThrottle: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private let bucket: SharedTokenBucket
    private var delayedRead: Scheduled<Void>?

    init(bucket: SharedTokenBucket) { self.bucket = bucket }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bucket.consume(unwrapInboundIn(data).readableBytes)
        context.fireChannelRead(data)
    }

    func read(context: ChannelHandlerContext) {
        guard delayedRead == nil else { return }
        guard let delay = bucket.delayBeforeRead() else {
            context.read()
            return
        }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        delayedRead = context.eventLoop.scheduleTask(in: delay) {
            let (handler, context) = loopBound.value
            handler.delayedRead = nil
            handler.read(context: context)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        delayedRead?.cancel()
        delayedRead = nil
    }
}

/// Drops a session's datagrams beyond its bucket (UDP has no backpressure to apply).
final class DatagramPolicer: DatagramSessionFilter {
    private let buckets: [TrafficDirection: SharedTokenBucket]

    init(buckets: [TrafficDirection: SharedTokenBucket]) { self.buckets = buckets }

    func admit(bytes: Int, direction: TrafficDirection) -> Bool {
        buckets[direction]?.admit(bytes) ?? true
    }
}
