import NIOCore
import Testing
import WeirLimiters

/// The token bucket in isolation, driven by explicit times.
@Suite struct TokenBucketTests {
    let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test func startsFullWithTheBurst() {
        var bucket = TokenBucket(rate: 1000, burst: 500, now: t0)
        #expect(bucket.rate == 1000)
        #expect(bucket.burst == 500)
        #expect(bucket.delayBeforeRead(now: t0) == nil)
        // Exactly the burst passes with no debt.
        bucket.consume(500, now: t0)
        #expect(bucket.delayBeforeRead(now: t0) == nil)
        // One more byte is a debt of 1 byte = 1 ms at 1000 B/s.
        bucket.consume(1, now: t0)
        #expect(bucket.delayBeforeRead(now: t0) == .milliseconds(1))
    }

    @Test func debtGivesTheExactDelay() {
        var bucket = TokenBucket(rate: 1000, burst: 500, now: t0)
        bucket.consume(1500, now: t0)  // 1000 bytes of debt
        #expect(bucket.delayBeforeRead(now: t0) == .seconds(1))
        #expect(bucket.delayBeforeRead(now: t0 + .milliseconds(250)) == .milliseconds(750))
        #expect(bucket.delayBeforeRead(now: t0 + .milliseconds(750)) == .milliseconds(250))
        #expect(bucket.delayBeforeRead(now: t0 + .seconds(1)) == nil)
    }

    @Test func delayIsDebtOverRate() {
        var bucket = TokenBucket(rate: 1_048_576, burst: 65_536, now: t0)  // 1 MiB/s
        bucket.consume(65_536 + 65_536, now: t0)
        // 65536 B of debt / 1048576 B/s = 62.5 ms.
        #expect(bucket.delayBeforeRead(now: t0) == .microseconds(62_500))
    }

    @Test func delayRoundsUpToTheNanosecond() {
        var bucket = TokenBucket(rate: 3, burst: 1, now: t0)
        bucket.consume(2, now: t0)  // 1 byte of debt at 3 B/s = 333,333,333.3 ns
        #expect(bucket.delayBeforeRead(now: t0) == .nanoseconds(333_333_334))
    }

    @Test func refillIsCappedAtTheBurst() {
        var bucket = TokenBucket(rate: 1000, burst: 500, now: t0)
        bucket.consume(500, now: t0)
        // An hour idle refills only up to the burst.
        let later = t0 + .hours(1)
        bucket.consume(500, now: later)
        #expect(bucket.delayBeforeRead(now: later) == nil)
        bucket.consume(100, now: later)
        #expect(bucket.delayBeforeRead(now: later) == .milliseconds(100))
    }

    @Test func partialRefillPaysPartOfTheDebt() {
        var bucket = TokenBucket(rate: 2000, burst: 1000, now: t0)
        bucket.consume(3000, now: t0)  // debt 2000 bytes = 1 s
        bucket.consume(1000, now: t0 + .milliseconds(500))  // refilled 1000, then 1000 more debt
        #expect(bucket.delayBeforeRead(now: t0 + .milliseconds(500)) == .seconds(1))
    }

    @Test func timeGoingBackwardsDoesNotRefillOrCrash() {
        var bucket = TokenBucket(rate: 1000, burst: 500, now: t0)
        bucket.consume(1500, now: t0)
        #expect(bucket.delayBeforeRead(now: t0 - .seconds(5)) == .seconds(1))
    }

    /// A reader that takes 64 KiB whenever the bucket allows: over time T the bytes passed are
    /// rate × T + burst, give or take the last read.
    @Test(arguments: [
        (1_048_576.0, 65_536.0, 10.0),
        (10_485_760.0, 524_288.0, 5.0),
        (125_000_000.0, 6_250_000.0, 2.0),
        (100_000.0, 65_536.0, 30.0),
    ])
    func longRunThroughputIsRateTimesTimePlusBurst(rate: Double, burst: Double, seconds: Double) {
        let read = 65_536
        var bucket = TokenBucket(rate: rate, burst: burst, now: t0)
        let end = t0 + .nanoseconds(Int64(seconds * 1e9))
        var now = t0
        var passed = 0.0
        var reads = 0
        while now <= end {
            if let delay = bucket.delayBeforeRead(now: now) {
                #expect(delay > .zero)
                now = now + delay
            } else {
                bucket.consume(read, now: now)
                passed += Double(read)
                reads += 1
            }
        }
        let expected = rate * seconds + burst
        #expect(passed >= expected - 1, "passed \(passed), expected at least \(expected)")
        #expect(passed <= expected + Double(read), "passed \(passed), expected at most \(expected + Double(read))")
        #expect(reads > Int(seconds))
    }

    @Test func admitDropsWhileInDebtWithoutCharging() {
        var bucket = TokenBucket(rate: 1000, burst: 1000, now: t0)
        let first = bucket.admit(1500, now: t0)  // not in debt: passes, leaves 500 of debt
        let second = bucket.admit(1, now: t0)
        let early = bucket.admit(100, now: t0 + .milliseconds(499))
        // Dropped datagrams were not charged: the debt is paid after exactly 500 ms.
        let paid = bucket.admit(100, now: t0 + .milliseconds(500))
        let next = bucket.admit(1, now: t0 + .milliseconds(500))
        #expect([first, second, early, paid, next] == [true, false, false, true, false])
        #expect(bucket.delayBeforeRead(now: t0 + .milliseconds(500)) == .milliseconds(100))
    }

    @Test func admitPassesTheBurstThenTheRate() {
        var bucket = TokenBucket(rate: 1200, burst: 1200, now: t0)
        var admitted = 0
        // 100-byte datagrams offered every 10 ms for 10 s: 10,000 B/s offered against 1,200 B/s allowed.
        for tick in 0..<1000 {
            if bucket.admit(100, now: t0 + .milliseconds(Int64(tick * 10))) { admitted += 100 }
        }
        let allowed = 1200.0 * 10 + 1200
        #expect(Double(admitted) >= allowed - 100)
        #expect(Double(admitted) <= allowed + 100)
    }
}
