import Foundation
import Testing
import WeirAgent
import WeirCore
import WeirStages

/// The reload diff, from configurations loaded the way the agent loads them.
@Suite struct ReloadPlanTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    private func pipelines(_ yaml: String) throws -> [PipelineSpec] {
        try loader.loadPipelines(yaml: yaml, name: "reload.yaml")
    }

    private func forward(_ id: String, port: Int, target: String = "127.0.0.1:80", timeout: String = "3s") -> String {
        """
          \(id):
            stages:
              - type: listen.tcp
                address: 0.0.0.0:\(port)
                backlog: 1024
              - type: connect.tcp
                addresses: [\(target)]
                connect_timeout: \(timeout)

        """
    }

    @Test func identicalConfigGivesAnEmptyPlan() throws {
        let yaml = "pipelines:\n" + forward("web", port: 8080) + forward("api", port: 8443)
        let plan = ReloadPlan(old: try pipelines(yaml), new: try pipelines(yaml))
        #expect(plan.isEmpty)
        #expect(plan == ReloadPlan(unchanged: ["api", "web"]))
    }

    @Test func addRemoveChangeAndUnchangedAreSortedByID() throws {
        let old = try pipelines(
            "pipelines:\n" + forward("keep", port: 8001) + forward("gone", port: 8002) + forward("edit", port: 8003))
        let new = try pipelines(
            "pipelines:\n" + forward("keep", port: 8001) + forward("edit", port: 8003, timeout: "5s")
                + forward("zeta-new", port: 8005) + forward("alpha-new", port: 8004))
        let plan = ReloadPlan(old: old, new: new)
        #expect(plan.toAdd == ["alpha-new", "zeta-new"])
        #expect(plan.toRemove == ["gone"])
        #expect(plan.toChange == ["edit"])
        #expect(plan.unchanged == ["keep"])
        #expect(!plan.isEmpty)
    }

    @Test(arguments: [
        ("address: 0.0.0.0:8080", "address: 0.0.0.0:8081"),
        ("backlog: 1024", "backlog: 128"),
        ("connect_timeout: 3s", "connect_timeout: 10s"),
        ("[127.0.0.1:80]", "[127.0.0.1:80, 127.0.0.2:80]"),
    ])
    func changingAStageOptionChangesThePipeline(original: String, replacement: String) throws {
        let yaml = "pipelines:\n" + forward("web", port: 8080) + forward("other", port: 9090)
        #expect(yaml.contains(original))
        // Only the first pipeline ("web") is edited.
        let edited = yaml.replacingCharacters(in: try #require(yaml.range(of: original)), with: replacement)
        let plan = ReloadPlan(old: try pipelines(yaml), new: try pipelines(edited))
        #expect(plan == ReloadPlan(toChange: ["web"], unchanged: ["other"]))
    }

    @Test func addingAStageChangesThePipeline() throws {
        let old = try pipelines("pipelines:\n" + forward("web", port: 8080))
        let new = try pipelines(
            "pipelines:\n" + forward("web", port: 8080).replacingOccurrences(
                of: "      - type: connect.tcp", with: "      - type: limit.bandwidth\n        rate: 1MiB/s\n      - type: connect.tcp"))
        #expect(new.first?.stages.count == 3)
        #expect(ReloadPlan(old: old, new: new) == ReloadPlan(toChange: ["web"]))
    }

    @Test func reorderingKeysQuotingAndPipelinesChangesNothing() throws {
        let old = try pipelines("pipelines:\n" + forward("web", port: 8080) + forward("api", port: 8443))
        let new = try pipelines(
            """
            # reformatted: pipelines swapped, keys reordered, strings quoted, flow and block styles swapped
            pipelines:
              api:
                stages:
                  - {backlog: 1024, address: "0.0.0.0:8443", type: listen.tcp}
                  - connect_timeout: 3s
                    addresses:
                      - "127.0.0.1:80"
                    type: connect.tcp
              web:
                stages:
                  - address: '0.0.0.0:8080'
                    type: listen.tcp
                    backlog: 1024
                  - type: connect.tcp
                    connect_timeout: "3s"
                    addresses: [127.0.0.1:80]

            """)
        let plan = ReloadPlan(old: old, new: new)
        #expect(plan.isEmpty)
        #expect(plan.unchanged == ["api", "web"])
    }

    @Test func renamingAPipelineIsARemoveAndAnAdd() throws {
        let old = try pipelines("pipelines:\n" + forward("web", port: 8080))
        let new = try pipelines("pipelines:\n" + forward("www", port: 8080))
        #expect(ReloadPlan(old: old, new: new) == ReloadPlan(toAdd: ["www"], toRemove: ["web"]))
    }

    @Test func fromAndToNothing() throws {
        let some = try pipelines("pipelines:\n" + forward("b", port: 8002) + forward("a", port: 8001))
        #expect(ReloadPlan(old: [], new: some) == ReloadPlan(toAdd: ["a", "b"]))
        #expect(ReloadPlan(old: some, new: []) == ReloadPlan(toRemove: ["a", "b"]))
        #expect(ReloadPlan(old: [], new: []).isEmpty)
    }

    @Test func fingerprintDictionaryForm() {
        let plan = ReloadPlan(old: ["a": "1", "b": "2", "c": "3"], new: ["b": "2", "c": "4", "d": "5"])
        #expect(plan == ReloadPlan(toAdd: ["d"], toRemove: ["a"], toChange: ["c"], unchanged: ["b"]))
    }

    @Test func plansFromWholeConfigFilesWithDropIns() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-reload-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder + "/pipelines.d", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let main = folder + "/weir.yaml"
        try "log:\n  level: info\n".write(toFile: main, atomically: true, encoding: .utf8)
        try ("pipelines:\n" + forward("web", port: 8080)).write(toFile: folder + "/pipelines.d/web.yaml", atomically: true, encoding: .utf8)
        try ("pipelines:\n" + forward("api", port: 8443)).write(toFile: folder + "/pipelines.d/api.yaml", atomically: true, encoding: .utf8)
        let before = try loader.load(path: main)

        // Edit one drop-in, delete another, add a third; changing only the log level touches no pipeline.
        try "log:\n  level: debug\n".write(toFile: main, atomically: true, encoding: .utf8)
        try ("pipelines:\n" + forward("web", port: 8080, target: "127.0.0.1:81"))
            .write(toFile: folder + "/pipelines.d/web.yaml", atomically: true, encoding: .utf8)
        try FileManager.default.removeItem(atPath: folder + "/pipelines.d/api.yaml")
        try ("pipelines:\n" + forward("dns", port: 5353)).write(toFile: folder + "/pipelines.d/dns.yaml", atomically: true, encoding: .utf8)
        let after = try loader.load(path: main)

        #expect(after.logLevel == .debug)
        let plan = ReloadPlan(old: before.pipelines, new: after.pipelines)
        #expect(plan == ReloadPlan(toAdd: ["dns"], toRemove: ["api"], toChange: ["web"]))
        #expect(ReloadPlan(old: after.pipelines, new: try loader.load(path: main).pipelines).isEmpty)
    }
}
