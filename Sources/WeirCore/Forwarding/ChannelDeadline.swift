import NIOCore

/// One timer on a channel's event loop that runs `expired` (usually: close the connection) unless cancelled
/// or re-armed first — what the deadlines of openings, handshakes and idle connections share. Held by a
/// channel handler and touched only on its channel's loop.
public struct ChannelDeadline {
    private var timer: Scheduled<Void>?

    public init() {}

    /// Starts the timer again: `expired` runs after `timeout`.
    public mutating func arm(_ timeout: TimeAmount, on context: ChannelHandlerContext, _ expired: @escaping () -> Void) {
        cancel()
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout, expired)
    }

    public mutating func cancel() {
        timer?.cancel()
        timer = nil
    }
}
