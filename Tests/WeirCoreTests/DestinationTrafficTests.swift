import NIOCore
import Testing
@testable import WeirCore

@Suite struct DestinationTrafficTests {
    /// Sums every series of the table (shown destinations and other).
    static func sum(_ table: DestinationTraffic) -> DestinationTraffic.Totals {
        let (shown, other) = table.series()
        return shown.reduce(other) { $0 + $1.totals }
    }

    /// The exposition's samples: (destination, direction or "connections") → value.
    static func samples(_ table: DestinationTraffic) -> [String: UInt64] {
        var writer = ExpositionWriter()
        table.collect(into: &writer)
        var output: [UInt8] = []
        writer.render(into: &output)
        var samples: [String: UInt64] = [:]
        for line in String(decoding: output, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
            let destination = line.split(separator: "destination=\"")[1].split(separator: "\"")[0]
            let direction = line.contains("direction=\"in\"") ? "in" : line.contains("direction=\"out\"") ? "out" : "connections"
            samples["\(destination) \(direction)"] = UInt64(line.split(separator: " ").last!)!
        }
        return samples
    }

    @Test("10,000 distinct destinations: at most top N series plus other, a bounded number followed, and the series add up to every byte and connection counted")
    func manyDestinations() {
        let table = DestinationTraffic(pipeline: "p", limit: 100, candidateLimit: 1_000, rebalanceInterval: .hours(1))
        var expected = DestinationTraffic.Totals()
        for index in 0..<10_000 {
            let slot = table.opened("d\(index).example")
            slot.addIn(index % 700 + 1)
            slot.addOut(2 * (index % 700 + 1))
            expected = expected + DestinationTraffic.Totals(bytesIn: UInt64(index % 700 + 1), bytesOut: UInt64(2 * (index % 700 + 1)), connections: 1)
            table.closed(slot)
        }
        #expect(table.tracked <= 1_100)
        let (shown, _) = table.series()
        #expect(shown.count == 100)
        #expect(Self.sum(table) == expected)
        let samples = Self.samples(table)
        #expect(samples.count == 101 * 3, "100 destinations and other, in/out/connections each")
        #expect(samples.values.reduce(0, +) == expected.bytesIn + expected.bytesOut + expected.connections)
        table.rebalance()
        #expect(Self.sum(table) == expected)
    }

    @Test("a destination that becomes busy takes the place of the quietest shown one at the next rebalance; every series only grows and the sum stays exact")
    func busyDestinationIsPromoted() {
        let table = DestinationTraffic(pipeline: "p", limit: 3, candidateLimit: 10, rebalanceInterval: .hours(1))
        var slots: [String: DestinationTraffic.Slot] = [:]
        for name in ["a", "b", "c", "d", "e"] { slots[name] = table.opened(name) }
        for name in ["a", "b", "c", "d", "e"] { slots[name]!.addIn(10) }
        #expect(Set(table.series().shown.map(\.name)) == ["a", "b", "c"], "the first three fill the shown set")
        var before = Self.samples(table)
        #expect(before["other in"] == 20)

        // e gets busy, a keeps going a little, b and c stop.
        slots["e"]!.addIn(5_000)
        slots["a"]!.addIn(100)
        table.rebalance()
        let shown = Set(table.series().shown.map(\.name))
        #expect(shown.contains("e") && shown.contains("a") && shown.count == 3)
        var after = Self.samples(table)
        for (key, value) in before where after[key] != nil {
            #expect(after[key]! >= value, "\(key) went from \(value) to \(after[key]!)")
        }
        #expect(after["e in"] == 0, "e's series starts at zero: what it moved before is in other")
        #expect(Self.sum(table).bytesIn == 5 * 10 + 5_000 + 100)

        // Bytes that keep arriving on a demoted destination's open connection count in other.
        let demoted = ["b", "c"].first { !shown.contains($0) }!
        before = after
        slots[demoted]!.addIn(7)
        slots["e"]!.addIn(3)
        after = Self.samples(table)
        #expect(after["other in"] == before["other in"]! + 7)
        #expect(after["e in"] == before["e in"]! + 3)
        #expect(Self.sum(table).bytesIn == 5 * 10 + 5_000 + 100 + 10)
    }

    @Test("followed destinations with open connections are kept; when all are, new ones share other's slot; a destination named other is other")
    func overflow() {
        let table = DestinationTraffic(pipeline: "p", limit: 1, candidateLimit: 2, rebalanceInterval: .hours(1))
        let shown = table.opened("shown")
        let first = table.opened("f1"), second = table.opened("f2")
        let third = table.opened("f3")
        #expect(third.name == "other", "both followed slots have open connections")
        third.addOut(9)
        let named = table.opened("other")
        named.addOut(1)
        #expect(table.series().other.bytesOut == 10)
        table.closed(first)
        let fourth = table.opened("f4")
        #expect(fourth.name == "f4", "f1 had no open connection left: its place is taken")
        _ = (shown, second)
        #expect(table.tracked == 3)
    }
}
