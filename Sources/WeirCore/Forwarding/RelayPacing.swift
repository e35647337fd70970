/// The pacers of one relayed direction (its pipeline's `limit.bandwidth` stages), and until when they hold
/// its reads back.
///
/// The same rule as the filters' channel handlers: a read takes what it took and may leave a bucket in debt;
/// the direction's next read waits until every pacer allows it. Bytes already read still go on to the
/// destination while the direction waits, and its readiness is kept (edge-triggered sockets report it once),
/// so nothing is lost: the source is simply not read, its kernel buffers fill, and TCP slows the sender.
struct RelayPacing {
    let pacers: [any StreamPacer]
    /// Monotonic nanoseconds before which the direction does not read; 0 when no wait is set.
    private(set) var resumeAt: UInt64 = 0

    init(_ pacers: [any StreamPacer]) { self.pacers = pacers }

    enum Decision: Equatable {
        case read
        /// Wait until the time; `new`: the wait was set by this call (a wakeup must be scheduled for it).
        case wait(until: UInt64, new: Bool)
    }

    /// Whether the direction may read at `now`.
    mutating func decide(now: UInt64) -> Decision {
        if resumeAt > now { return .wait(until: resumeAt, new: false) }
        var longest: Int64 = 0
        for pacer in pacers {
            if let delay = pacer.delayBeforeRead()?.nanoseconds, delay > longest { longest = delay }
        }
        guard longest > 0 else {
            resumeAt = 0
            return .read
        }
        resumeAt = now + UInt64(longest)
        return .wait(until: resumeAt, new: true)
    }

    /// Counts bytes the direction read.
    func consumed(_ bytes: Int) {
        for pacer in pacers { pacer.consume(bytes) }
    }

    /// Whether the direction waits at `now` (it is then not idle: the agent holds it back).
    func waiting(now: UInt64) -> Bool { resumeAt > now }
}

/// Wakeups at monotonic times, earliest first (a binary min-heap): when paced directions may read again.
///
/// An entry only names a direction (its connection's tag and side); the owner checks on expiry whether the
/// direction still waits for that time, so a closed connection or a replaced wait needs no removal.
struct RelayWakeups {
    struct Entry {
        let time: UInt64
        let tag: UInt64
    }

    private var heap: [Entry] = []

    var isEmpty: Bool { heap.isEmpty }
    /// The earliest time, if any.
    var next: UInt64? { heap.first?.time }

    mutating func add(_ time: UInt64, tag: UInt64) {
        heap.append(Entry(time: time, tag: tag))
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].time < heap[parent].time else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    /// Removes and returns the entries due at `now`, earliest first.
    mutating func takeDue(now: UInt64) -> [Entry] {
        var due: [Entry] = []
        while let first = heap.first, first.time <= now {
            due.append(first)
            let last = heap.removeLast()
            guard !heap.isEmpty else { break }
            heap[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < heap.count, heap[left].time < heap[smallest].time { smallest = left }
                if right < heap.count, heap[right].time < heap[smallest].time { smallest = right }
                guard smallest != parent else { break }
                heap.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return due
    }

    /// Milliseconds from `now` to the earliest time, rounded up (an epoll timeout: waking early would only
    /// find nothing due), or nil when there is none.
    func millisecondsUntilNext(now: UInt64) -> Int32? {
        guard let next else { return nil }
        guard next > now else { return 0 }
        return Int32(clamping: (next - now + 999_999) / 1_000_000)
    }
}
