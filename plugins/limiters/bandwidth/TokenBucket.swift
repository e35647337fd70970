import NIOCore

/// A token bucket in bytes, driven by explicit times so it is tested without I/O.
///
/// Reads are not split to fit the bucket: a read takes what it took and leaves the bucket in debt, and the
/// next read waits until the debt is paid. Over any long interval the bytes passed are `rate × time + burst`.
public struct TokenBucket: Sendable {
    public let rate: Double
    public let burst: Double
    private var tokens: Double
    private var updated: NIODeadline

    /// `rate` in bytes per second; `burst` is the bucket size in bytes, which starts full.
    public init(rate: Double, burst: Double, now: NIODeadline) {
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now
    }

    private mutating func refill(now: NIODeadline) {
        guard now > updated else { return }
        let elapsed = Double((now - updated).nanoseconds) / 1e9
        tokens = min(burst, tokens + elapsed * rate)
        updated = now
    }

    /// Takes `bytes` that were already read; may leave the bucket in debt.
    public mutating func consume(_ bytes: Int, now: NIODeadline) {
        refill(now: now)
        tokens -= Double(bytes)
    }

    /// How long to wait before the next read: nil when reading may go on now.
    public mutating func delayBeforeRead(now: NIODeadline) -> TimeAmount? {
        refill(now: now)
        guard tokens < 0 else { return nil }
        return .nanoseconds(Int64((-tokens / rate * 1e9).rounded(.up)))
    }

    /// For datagrams: takes `bytes` and returns true when the bucket is not in debt, else drops (false).
    public mutating func admit(_ bytes: Int, now: NIODeadline) -> Bool {
        refill(now: now)
        guard tokens >= 0 else { return false }
        tokens -= Double(bytes)
        return true
    }
}
