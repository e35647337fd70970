/// Lets a repeated warning through at most once per interval and counts the ones it holds back, so a failure
/// that hits every client at once (out of descriptors, a flood of new sources) does not flood the log: the
/// first is logged at once, the next one after the interval says how many were held back meanwhile.
/// Not locked: one per thread (a relay loop's).
struct LogThrottle {
    let interval: UInt64
    private var nextAllowed: UInt64 = 0
    private var heldBack = 0

    /// `interval` in monotonic nanoseconds.
    init(interval: UInt64) { self.interval = interval }

    /// Whether to log at `now`: nil to hold this one back, else how many were held back since the last.
    mutating func admit(now: UInt64) -> Int? {
        guard now >= nextAllowed else {
            heldBack += 1
            return nil
        }
        defer {
            heldBack = 0
            nextAllowed = now &+ interval
        }
        return heldBack
    }
}
