import Testing

@testable import WeirCore

@Suite struct LogThrottleTests {
    @Test("The first warning passes at once, then one per interval saying how many were held back")
    func oncePerInterval() {
        var throttle = LogThrottle(interval: 10)
        #expect(throttle.admit(now: 100) == 0)
        #expect(throttle.admit(now: 101) == nil)
        #expect(throttle.admit(now: 109) == nil)
        #expect(throttle.admit(now: 110) == 2, "two held back since the last")
        #expect(throttle.admit(now: 119) == nil)
        #expect(throttle.admit(now: 500) == 1)
        #expect(throttle.admit(now: 510) == 0, "a quiet interval: nothing held back")
    }
}
