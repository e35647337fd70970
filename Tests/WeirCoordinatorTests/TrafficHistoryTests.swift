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
}
