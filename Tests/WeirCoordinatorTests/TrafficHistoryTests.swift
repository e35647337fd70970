import Testing
import WeirCoordinatorProtocol
@testable import WeirCoordinator

@Suite struct TrafficHistoryTests {
    @Test("growth between heartbeats: the difference; a restarted agent (counters lower) counts from zero; a new pipeline all it has; no growth nothing")
    func growth() {
        let before = ["a": PipelineReport(bytesIn: 100, bytesOut: 50, connectionsTotal: 3), "b": PipelineReport(bytesIn: 10, bytesOut: 10, connectionsTotal: 1)]
        let after = [
            "a": PipelineReport(bytesIn: 160, bytesOut: 50, connectionsTotal: 4), "b": PipelineReport(bytesIn: 4, bytesOut: 2, connectionsTotal: 1),
            "c": PipelineReport(bytesIn: 7, bytesOut: 0, connectionsTotal: 1), "d": PipelineReport(),
        ]
        let growth = TrafficHistory.growth(previous: before, current: after)
        #expect(growth["a"] == .init(bytesIn: 60, bytesOut: 0, connections: 1))
        #expect(growth["b"] == .init(bytesIn: 4, bytesOut: 2, connections: 0), "restarted: from zero")
        #expect(growth["c"] == .init(bytesIn: 7, bytesOut: 0, connections: 1))
        #expect(growth["d"] == nil)
        #expect(TrafficHistory.growth(previous: after, current: after).isEmpty)
    }

    @Test("client addresses from an agent are kept only as sent by a well-behaved one: running pipelines, IP addresses, finite positive numbers, the busiest 50")
    func checkedAddresses() {
        var many: [String: AddressGrowth] = [:]
        for index in 0..<80 { many["10.0.\(index).1"] = AddressGrowth(bytesIn: Double(index + 1), bytesOut: 0) }
        let sent: [String: [String: AddressGrowth]] = [
            "edge": [
                "203.0.113.5": .init(bytesIn: 10, bytesOut: 2), "2001:db8::1": .init(bytesIn: 1, bytesOut: 0), "not an address": .init(bytesIn: 1, bytesOut: 1),
                "<script>": .init(bytesIn: 1, bytesOut: 1), "198.51.100.1": .init(bytesIn: .infinity, bytesOut: 0),
                "198.51.100.2": .init(bytesIn: -5, bytesOut: 0), "198.51.100.3": .init(bytesIn: 0, bytesOut: 0),
            ],
            "unknown": ["203.0.113.9": .init(bytesIn: 1, bytesOut: 1)],
            "busy": many,
        ]
        let kept = TrafficHistory.checked(sent, pipelines: ["edge", "busy"])
        #expect(kept["edge"] == ["203.0.113.5": .init(bytesIn: 10, bytesOut: 2), "2001:db8::1": .init(bytesIn: 1, bytesOut: 0)])
        #expect(kept["unknown"] == nil)
        #expect(kept["busy"]?.count == 50 && kept["busy"]?["10.0.79.1"] != nil && kept["busy"]?["10.0.0.1"] == nil)
    }
}
