import NIOConcurrencyHelpers

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

    /// Whether `admit(now:)` would let one through.
    func mayLog(now: UInt64) -> Bool { now >= nextAllowed }
}

/// LogThrottles by key (a pipeline's failing destinations), shared by several threads (a pipeline's event
/// loops and relay threads each meet the same failing target). The table is bounded: when it is full, keys
/// whose interval has passed are dropped (what they held back is in the metrics), and if that frees nothing
/// the newcomer shares one overflow throttle, so clients naming ever new destinations cannot grow it or the
/// log. Taken only when there is something to log, so its lock is not on any hot path.
final class KeyedLogThrottle: Sendable {
    /// The key of failures that found the table full.
    static let overflowKey = "other"

    private struct Table {
        var throttles: [String: LogThrottle] = [:]
        var overflow: LogThrottle
    }

    private let interval: UInt64
    private let capacity: Int
    private let table: NIOLockedValueBox<Table>

    init(interval: UInt64, capacity: Int) {
        self.interval = interval
        self.capacity = capacity
        table = NIOLockedValueBox(Table(overflow: LogThrottle(interval: interval)))
    }

    /// As LogThrottle.admit for `key`, and the key it was counted under (`key`, or `overflowKey`).
    func admit(_ key: String, now: UInt64) -> (heldBack: Int?, key: String) {
        table.withLockedValue { table in
            if table.throttles[key] == nil, table.throttles.count >= capacity {
                table.throttles = table.throttles.filter { !$0.value.mayLog(now: now) }
            }
            guard table.throttles[key] != nil || table.throttles.count < capacity else {
                return (table.overflow.admit(now: now), Self.overflowKey)
            }
            return (table.throttles[key, default: LogThrottle(interval: interval)].admit(now: now), key)
        }
    }

    /// Keys in the table now.
    var count: Int { table.withLockedValue { $0.throttles.count } }
}
