import Foundation
import Testing

@Suite("weir command line", .serialized)
struct CommandLineTests {
    @Test("validate: 0 for a valid config, 78 with FILE:LINE:COL: path (type): message for every error")
    func validateReportsLocations() throws {
        let agent = try WeirProcess(pipelines: """
            pipelines:
              web:
                stages:
                  - type: listen.tcp
                    address: 0.0.0.0:8080
                  - type: connect.tcp
                    addresses: [127.0.0.1:80]
            """)
        let valid = try runWeir(["validate", "--config", agent.configPath])
        #expect(valid.status == 0, "\(valid.output)")

        try agent.writePipelines("""
            pipelines:
              web:
                stages:
                  - type: listen.tcp
                    address: 0.0.0.0:99999
                  - type: limit.bandwidth
                    rate: fast
                  - type: connect.tcp
                    addresses: [127.0.0.1:80]
              lonely:
                stages:
                  - type: listen.udp
                    address: 127.0.0.1:5353
            """)
        let invalid = try runWeir(["validate", "--config", agent.configPath])
        let file = agent.directory.appendingPathComponent("pipelines.d/main.yaml").path
        #expect(invalid.status == 78)
        let lines = invalid.output.split(separator: "\n").map(String.init)
        #expect(lines.contains { $0.hasPrefix("\(file):5:18: pipelines.web.stages[0] (listen.tcp): address: ") }, "\(invalid.output)")
        #expect(lines.contains { $0.hasPrefix("\(file):7:15: pipelines.web.stages[1] (limit.bandwidth): rate: ") }, "\(invalid.output)")
        #expect(lines.contains { $0.hasPrefix("\(file):12:9: pipelines.lonely.stages[0] (listen.udp): ") && $0.contains("connect.*") }, "\(invalid.output)")
    }

    @Test("agent exits 78 on an invalid configuration at start")
    func agentRefusesInvalidConfig() throws {
        let agent = try WeirProcess(pipelines: "pipelines:\n  x:\n    stages: []\n")
        #expect(throws: AgentFailed.self) { try agent.start() }
        #expect(agent.waitForExit(timeout: 5) == 78)
    }

    @Test("stages lists every stage type; stages TYPE prints options and sample; version prints")
    func stagesAndVersion() throws {
        let list = try runWeir(["stages"])
        #expect(list.status == 0)
        for type in ["listen.tcp", "listen.udp", "connect.tcp", "connect.udp", "limit.bandwidth"] {
            #expect(list.output.contains(type))
        }
        let one = try runWeir(["stages", "connect.tcp"])
        #expect(one.output.contains("connect_timeout"))
        #expect(one.output.contains("pipelines:"))
        #expect(try runWeir(["stages", "nope.nope"]).status != 0)
        #expect(try runWeir(["version"]).output.hasPrefix("weir "))
    }
}
