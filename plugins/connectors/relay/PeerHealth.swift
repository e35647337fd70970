import NIOCore

/// Which next hops to try first: those that answered last time, in configured order, then those that failed,
/// soonest-retry first. A failed peer waits 1 s, doubling per further failure up to `maxBackoff`, before it
/// is preferred again; a success clears its record. Pure state, advanced with explicit times.
struct PeerHealth: Sendable {
    private struct Record: Sendable {
        var failures = 0
        var retryAt = NIODeadline.uptimeNanoseconds(0)
    }

    let count: Int
    let maxBackoff: TimeAmount
    private var records: [Record]

    init(count: Int, maxBackoff: TimeAmount) {
        self.count = count
        self.maxBackoff = maxBackoff
        records = Array(repeating: Record(), count: count)
    }

    func isUp(_ index: Int, at now: NIODeadline) -> Bool { records[index].retryAt <= now }

    /// Indices in the order to try them.
    func order(at now: NIODeadline) -> [Int] {
        let up = (0..<count).filter { isUp($0, at: now) }
        let down = (0..<count).filter { !isUp($0, at: now) }.sorted { records[$0].retryAt < records[$1].retryAt }
        return up + down
    }

    mutating func failed(_ index: Int, at now: NIODeadline) {
        records[index].failures += 1
        let shift = min(records[index].failures - 1, 20)
        let backoff = min(TimeAmount.seconds(1) * (1 << shift), maxBackoff)
        records[index].retryAt = now + backoff
    }

    mutating func succeeded(_ index: Int) {
        records[index] = Record()
    }
}
