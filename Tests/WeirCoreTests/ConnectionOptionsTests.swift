import Testing
import WeirCore
import WeirStages

/// The options that bound what clients can make the agent hold, as the loader reads them.
@Suite struct ConnectionOptionsTests {
    func errors(_ stages: String) -> [String] {
        do {
            _ = try loader.loadPipelines(yaml: "pipelines:\n  p:\n    stages:\n" + stages, name: "p.yaml")
            Issue.record("expected errors")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func listenerLimitsAreRead() throws {
        let specs = try loader.loadPipelines(
            yaml: """
                pipelines:
                  p:
                    stages:
                      - {type: listen.socks5, address: "127.0.0.1:1080", max_connections: 500, idle_timeout: 5m, handshake_timeout: 3s}
                      - {type: connect.tcp}
                """, name: "p.yaml")
        let listener = try #require(specs.first?.listener?.config as? any ListenerConfig)
        #expect(listener.connectionOptions == ConnectionOptions(maxConnections: 500, idleTimeout: .seconds(300)))
    }

    @Test func badValuesAreReportedAtTheirKeys() {
        #expect(errors("      - {type: listen.tcp, address: \"127.0.0.1:1\", max_connections: 0}\n      - {type: connect.tcp, addresses: [\"127.0.0.1:2\"]}\n")
            == ["p.yaml:4:69: pipelines.p.stages[0] (listen.tcp): max_connections: 0 is out of range 1...10000000"])
        #expect(errors("      - {type: listen.tcp, address: \"127.0.0.1:1\", idle_timeout: 10ms}\n      - {type: connect.tcp, addresses: [\"127.0.0.1:2\"]}\n")
            == ["p.yaml:4:66: pipelines.p.stages[0] (listen.tcp): idle_timeout: must be at least 100ms"])
        let clientSide = errors("""
                  - {type: listen.tcp, address: "127.0.0.1:1"}
                  - {type: transform.aead, side: client, password: x, target: "a:1", handshake_timeout: 1s}
                  - {type: connect.tcp, addresses: ["127.0.0.1:2"]}

            """)
        #expect(clientSide.count == 1 && clientSide[0].contains("handshake_timeout only applies to side: server"), "\(clientSide)")
    }
}
