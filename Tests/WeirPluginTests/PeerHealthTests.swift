import NIOCore
import Testing

@testable import WeirConnectors

/// connect.relay's choice of next hop, with explicit times.
@Suite struct PeerHealthTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test func answeringPeersComeFirstInTheirOrder() {
        var health = PeerHealth(count: 3, maxBackoff: .seconds(30))
        #expect(health.order(at: start) == [0, 1, 2])
        health.failed(0, at: start)
        #expect(health.order(at: start) == [1, 2, 0], "a failed peer goes last")
        health.failed(1, at: start + .milliseconds(10))
        #expect(health.order(at: start + .milliseconds(20)) == [2, 0, 1], "failed peers by retry time")
        #expect(health.order(at: start + .milliseconds(1_001)) == [0, 2, 1], "after 1 s the first is preferred again")
        health.succeeded(1)
        #expect(health.order(at: start + .milliseconds(20)) == [1, 2, 0])
    }

    @Test func backoffDoublesUpToTheMaximum() {
        var health = PeerHealth(count: 1, maxBackoff: .seconds(5))
        var now = start
        for expected in [1, 2, 4, 5, 5] {
            health.failed(0, at: now)
            #expect(!health.isUp(0, at: now + .seconds(Int64(expected)) - .milliseconds(1)))
            #expect(health.isUp(0, at: now + .seconds(Int64(expected))))
            now = now + .seconds(Int64(expected))
        }
        health.succeeded(0)
        health.failed(0, at: now)
        #expect(health.isUp(0, at: now + .seconds(1)), "a success resets the backoff")
    }
}
