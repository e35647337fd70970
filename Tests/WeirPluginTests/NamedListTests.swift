import Foundation
import Testing
import WeirCore
import WeirEnforcers
import WeirStages

/// `lists:` sections and enforce.nftables `allow_destinations.lists`, through the agent's loader.
@Suite struct NamedListTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    static func stage(lists: String) -> String {
        """
        pipelines:
          egress:
            stages:
              - type: enforce.nftables
                allow_destinations:
                  interfaces: [eth1]
                  entries: [9.9.9.9]
                  lists: [\(lists)]

        """
    }

    func errors(_ yaml: String) -> [String] {
        do {
            _ = try loader.loadPipelines(yaml: yaml, name: "l.yaml")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test("a stage's entries include its lists' entries, checked by the stage's rules at the list's line")
    func resolved() throws {
        let yaml = """
            lists:
              corp:
                entries: [1.1.1.1, { domain: api.example.com, protected: true }]
              more:
                entries: [{ address: 10.0.0.0/8, allow_private: true }]
            \(Self.stage(lists: "corp, more"))
            """
        let config = try #require(try loader.loadPipelines(yaml: yaml, name: "l.yaml").first?.stages.first?.config as? EnforceNftablesConfig)
        let entries = try #require(config.destinations?.entries)
        #expect(entries.count == 4)
        #expect(entries.filter(\.protected).count == 1)

        let bad = """
            lists:
              corp:
                entries: [1.1.1.1, 192.168.1.1]
            \(Self.stage(lists: "corp, nope"))
            """
        #expect(errors(bad) == [
            "l.yaml:3:24: lists.corp.entries[1]: 192.168.1.1 is not a public address; add allow_private: true to allow it",
            "l.yaml:11:25: pipelines.egress.stages[0] (enforce.nftables): allow_destinations.lists[1]: unknown list \"nope\" (defined: corp)",
        ])
        #expect(errors("lists:\n  a b:\n    entries: []\n").first?.contains("list name must be") == true)
        #expect(errors("lists:\n  corp:\n    items: []\n").first?.contains("missing required key \"entries\"") == true)
    }

    @Test("editing a list changes the fingerprint of the stages that use it, and only theirs")
    func fingerprint() throws {
        func fingerprints(_ corp: String) throws -> [String: String] {
            let yaml = """
                lists:
                  corp:
                    entries: [\(corp)]
                \(Self.stage(lists: "corp"))
                  other:
                    stages:
                      - type: enforce.nftables
                        allow_destinations: { interfaces: [eth2], entries: [8.8.8.8] }
                """
            return Dictionary(uniqueKeysWithValues: try loader.loadPipelines(yaml: yaml, name: "l.yaml").map { ($0.id, $0.fingerprint) })
        }
        let before = try fingerprints("1.1.1.1")
        let after = try fingerprints("1.1.1.1, 1.0.0.1")
        #expect(before["egress"] != after["egress"])
        #expect(before["other"] == after["other"])
        #expect(try fingerprints("1.1.1.1") == before)
    }

    @Test("lists defined in one drop-in serve pipelines of another; the same name twice is an error")
    func acrossFiles() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-lists-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("pipelines.d"), withIntermediateDirectories: true)
        try "agent: { state_dir: /tmp }\nmetrics: { listen: \"off\" }\n".write(to: directory.appendingPathComponent("weir.yaml"), atomically: true, encoding: .utf8)
        try Self.stage(lists: "corp").write(to: directory.appendingPathComponent("pipelines.d/a.yaml"), atomically: true, encoding: .utf8)
        try "lists:\n  corp:\n    entries: [1.1.1.1]\n".write(to: directory.appendingPathComponent("pipelines.d/b.yaml"), atomically: true, encoding: .utf8)
        let path = directory.appendingPathComponent("weir.yaml").path
        #expect(try loader.load(path: path).pipelines.map(\.id) == ["egress"])
        try "lists:\n  corp:\n    entries: [1.0.0.1]\n".write(to: directory.appendingPathComponent("pipelines.d/c.yaml"), atomically: true, encoding: .utf8)
        #expect(throws: ConfigErrors.self) { try loader.load(path: path) }
        do {
            _ = try loader.load(path: path)
        } catch {
            #expect(error.description.contains("duplicate list \"corp\" (first defined at \(directory.path)/pipelines.d/b.yaml:2:3)"), "\(error)")
        }
    }
}
