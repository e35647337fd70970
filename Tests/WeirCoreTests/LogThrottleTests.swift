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

@Suite struct KeyedLogThrottleTests {
    @Test("Each key has its own interval and count of held-back lines")
    func perKey() {
        let throttle = KeyedLogThrottle(interval: 10, capacity: 8)
        #expect(throttle.admit("a", now: 100) == (0, "a"))
        #expect(throttle.admit("b", now: 101) == (0, "b"), "another destination is logged at once")
        #expect(throttle.admit("a", now: 102) == (nil, "a"))
        #expect(throttle.admit("a", now: 103) == (nil, "a"))
        #expect(throttle.admit("b", now: 104) == (nil, "b"))
        #expect(throttle.admit("a", now: 110) == (2, "a"))
        #expect(throttle.admit("b", now: 111) == (1, "b"))
    }

    @Test("Full, it drops keys whose interval passed; if none did, newcomers share the overflow key: the table stays bounded")
    func bounded() {
        let throttle = KeyedLogThrottle(interval: 10, capacity: 4)
        for key in 0..<4 { #expect(throttle.admit("\(key)", now: 100) == (0, "\(key)")) }
        // 1,000 new keys within the interval: the first is logged under the overflow key, the rest held back there.
        #expect(throttle.admit("new0", now: 105) == (0, KeyedLogThrottle.overflowKey))
        for key in 1..<1_000 { #expect(throttle.admit("new\(key)", now: 105).heldBack == nil) }
        #expect(throttle.count == 4)
        #expect(throttle.admit("3", now: 106) == (nil, "3"), "keys in the table keep their own throttle")
        // Once the interval passed, the stale keys make room (what they held back is in the metrics).
        #expect(throttle.admit("late", now: 111) == (0, "late"))
        #expect(throttle.count == 1)
        for key in 1..<4 { #expect(throttle.admit("late\(key)", now: 112) == (0, "late\(key)")) }
        // Full again with nothing stale: the overflow key, whose next line says how many it held back.
        #expect(throttle.admit("later", now: 116) == (999, KeyedLogThrottle.overflowKey))
        #expect(throttle.count == 4)
    }
}
