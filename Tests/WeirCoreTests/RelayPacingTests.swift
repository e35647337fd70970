import NIOConcurrencyHelpers
import NIOCore
import Testing

@testable import WeirCore

/// The relay's pacing of limit.bandwidth directions, without I/O: when a direction may read, when it waits,
/// and the wakeups that end its waits.
@Suite struct RelayPacingTests {
    /// A pacer that owes `debt` nanoseconds of waiting once it has taken `allowance` bytes.
    final class ScriptedPacer: StreamPacer {
        let state = NIOLockedValueBox((taken: 0, allowance: 0, debt: Int64(0)))

        init(allowance: Int, debt: Int64) { state.withLockedValue { $0 = (0, allowance, debt) } }

        func consume(_ bytes: Int) { state.withLockedValue { $0.taken += bytes } }

        func delayBeforeRead() -> TimeAmount? {
            state.withLockedValue { $0.taken > $0.allowance ? .nanoseconds($0.debt) : nil }
        }

        func paid() { state.withLockedValue { $0.allowance = .max } }
    }

    @Test("A direction reads until a pacer is in debt, then waits the longest delay any pacer asks; one wakeup per wait")
    func waitsTheLongestDelay() {
        let perConnection = ScriptedPacer(allowance: 1000, debt: 2_000_000)
        let perPipeline = ScriptedPacer(allowance: 1000, debt: 5_000_000)
        var pacing = RelayPacing([perConnection, perPipeline])
        #expect(pacing.decide(now: 100) == .read)
        pacing.consumed(1500)
        #expect(pacing.decide(now: 200) == .wait(until: 5_000_200, new: true))
        #expect(pacing.waiting(now: 300))
        #expect(pacing.decide(now: 300) == .wait(until: 5_000_200, new: false), "the same wait: no second wakeup")
        perConnection.paid()
        perPipeline.paid()
        #expect(pacing.decide(now: 5_000_200) == .read)
        #expect(!pacing.waiting(now: 5_000_200))
    }

    @Test("At the end of a wait the pacers are asked again: a shared bucket another connection emptied sets a new wait")
    func asksAgainWhenTheWaitEnds() {
        let shared = ScriptedPacer(allowance: 0, debt: 1_000_000)
        var pacing = RelayPacing([shared])
        pacing.consumed(10)
        #expect(pacing.decide(now: 0) == .wait(until: 1_000_000, new: true))
        #expect(pacing.decide(now: 1_000_000) == .wait(until: 2_000_000, new: true))
    }

    @Test("Wakeups come out earliest first, only when due; the epoll timeout rounds up to whole milliseconds")
    func wakeupsInOrder() {
        var wakeups = RelayWakeups()
        #expect(wakeups.millisecondsUntilNext(now: 0) == nil)
        for (time, tag) in [(50, 5), (10, 1), (30, 3), (20, 2), (40, 4), (10, 6)] as [(UInt64, UInt64)] {
            wakeups.add(time * 1_000_000, tag: tag)
        }
        #expect(wakeups.millisecondsUntilNext(now: 9_500_000) == 1, "0.5 ms left: wait 1 ms, not 0 (a busy loop)")
        #expect(wakeups.takeDue(now: 9_999_999).isEmpty)
        #expect(Set(wakeups.takeDue(now: 10_000_000).map(\.tag)) == [1, 6])
        #expect(wakeups.takeDue(now: 35_000_000).map(\.tag) == [2, 3])
        #expect(wakeups.millisecondsUntilNext(now: 35_000_000) == 5)
        #expect(wakeups.millisecondsUntilNext(now: 60_000_000) == 0)
        #expect(wakeups.takeDue(now: .max).map(\.tag) == [4, 5])
        #expect(wakeups.isEmpty)
    }

    @Test("Many wakeups in random order come out sorted")
    func heapOrder() {
        var wakeups = RelayWakeups()
        var generator = SystemRandomNumberGenerator()
        let times = (0..<2000).map { _ in UInt64.random(in: 0..<1_000_000, using: &generator) }
        for (index, time) in times.enumerated() { wakeups.add(time, tag: UInt64(index)) }
        var out: [UInt64] = []
        var now: UInt64 = 0
        while !wakeups.isEmpty {
            now += 997
            out += wakeups.takeDue(now: now).map(\.time)
        }
        #expect(out == times.sorted())
    }
}
