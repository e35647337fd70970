import Foundation

/// Which of a peer's `endpoints` the device dials (the tunnel client's multi-server failover): the first
/// while it answers; the next when the peer stayed silent — no handshake and nothing received — for
/// `failover_after`; and, while on a fallback, the preferred one again every four `failover_after` (if it
/// is still down, the silence moves the choice on again). Driven by explicit times, tested without I/O.
struct EndpointFailover: Sendable, Equatable {
    let count: Int
    let failoverAfter: TimeInterval
    private(set) var index = 0
    /// When the current endpoint was chosen.
    private(set) var since: Date
    /// When the peer last showed life (a handshake, or received bytes going up).
    private var lastLife: Date
    private var lastReceive: UInt64 = 0

    init(count: Int, failoverAfter: TimeInterval, now: Date) {
        self.count = count
        self.failoverAfter = failoverAfter
        since = now
        lastLife = now
    }

    enum Decision: Equatable {
        case stay
        /// Dial endpoint `index` from now on (the session starts over).
        case switchTo(Int)
    }

    /// Takes the device's view of the peer (nil: not on the device) and decides.
    mutating func observe(handshake: Date?, receiveBytes: UInt64?, now: Date) -> Decision {
        if let handshake, handshake > lastLife { lastLife = handshake }
        if let receiveBytes {
            if receiveBytes > lastReceive { lastLife = max(lastLife, now) }
            lastReceive = receiveBytes
        }
        let silent = now.timeIntervalSince(max(lastLife, since)) >= failoverAfter
        if silent, count > 1 {
            return choose((index + 1) % count, now: now)
        }
        if index != 0, now.timeIntervalSince(since) >= 4 * failoverAfter {
            return choose(0, now: now)
        }
        return .stay
    }

    private mutating func choose(_ next: Int, now: Date) -> Decision {
        index = next
        since = now
        lastReceive = 0  // the session starts over: its counters too
        return .switchTo(next)
    }
}
