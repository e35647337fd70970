import Foundation
import Testing
import WeirCore
import WeirStages

/// A reload reuses what the last load composed and decoded where its input is unchanged. Whatever the edit,
/// the result must be what a fresh loader reads from the same files: the same pipelines, fingerprints and
/// positions, or the same errors at the same places.
@Suite struct PreviousLoadTests {
    static let tlsExample = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("plugins/transforms/tls/example").path

    /// A folder with weir.yaml and pipelines.d/, removed afterwards.
    struct Folder {
        let path: String
        var main: String { path + "/weir.yaml" }

        func write(_ name: String, _ text: String) throws {
            try text.write(toFile: path + "/" + name, atomically: true, encoding: .utf8)
        }

        func remove(_ name: String) throws { try FileManager.default.removeItem(atPath: path + "/" + name) }

        func copy(_ source: String, to name: String) throws {
            try? remove(name)
            try FileManager.default.copyItem(atPath: source, toPath: path + "/" + name)
        }

        static func with(_ body: (Folder) throws -> Void) throws {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("weir-reuse-\(UUID().uuidString)").path
            try FileManager.default.createDirectory(atPath: path + "/pipelines.d", withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: path) }
            try "agent: { state_dir: \(path)/state }\nmetrics: { listen: \"off\" }\n".write(toFile: path + "/weir.yaml", atomically: true, encoding: .utf8)
            try body(Folder(path: path))
        }
    }

    /// Everything a load decides, as text: each pipeline with its position and fingerprint and each stage's
    /// position, or every error.
    static func outcome(_ loader: ConfigLoader, _ path: String) -> [String] {
        do {
            return try loader.load(path: path).pipelines.map { pipeline in
                "\(pipeline.id) at \(pipeline.location.map { "\($0)" } ?? "-") = \(pipeline.fingerprint) stages at "
                    + pipeline.stages.map { stage in stage.location.map { "\($0)" } ?? "-" }.joined(separator: ", ")
            }
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    static func forward(_ id: String, port: Int, middle: String = "", listener: String? = nil) -> String {
        """
          \(id):
            stages:
              - \(listener ?? "{type: listen.tcp, address: \"127.0.0.1:\(port)\"}")
        \(middle.isEmpty ? "" : "      - \(middle)\n")      - {type: connect.tcp, addresses: ["127.0.0.1:9"]}

        """
    }

    @Test("Every reload gives what a fresh load of the same files gives, whatever the edit")
    func reloadsEqualFreshLoads() throws {
        try Folder.with { folder in
            let loader = ConfigLoader(registry: BuiltinStages.registry)
            var outcomes: [[String]] = []
            func check(_ edit: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) {
                let reloaded = Self.outcome(loader, folder.main)
                let fresh = Self.outcome(ConfigLoader(registry: BuiltinStages.registry), folder.main)
                #expect(reloaded == fresh, "after: \(edit)", sourceLocation: sourceLocation)
                outcomes.append(reloaded)
            }
            let p2 = { (rate: String) in Self.forward("p2", port: 20002, middle: "{type: limit.bandwidth, rate: \(rate)}") }
            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001) + p2("10MiB/s"))
            try folder.write("pipelines.d/b.yaml", "pipelines:\n" + Self.forward("p3", port: 20003))
            check("first load")

            try folder.write("pipelines.d/a.yaml", "# moved down\n\n" + "pipelines:\n" + Self.forward("p1", port: 20001) + p2("10MiB/s"))
            check("lines inserted above: same YAML, new positions")
            #expect(outcomes[1] != outcomes[0])

            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001) + p2("20MiB/s"))
            check("one stage changed")

            let reordered = "{address: \"127.0.0.1:20001\", type: listen.tcp}"
            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001, listener: reordered) + p2("20MiB/s"))
            check("keys reordered")

            let plain = "{type: listen.tcp, address: \"127.0.0.1:20001\", max_connections: 100}"
            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001, listener: plain) + p2("20MiB/s"))
            check("the number plain")
            let quoted = "{type: listen.tcp, address: \"127.0.0.1:20001\", max_connections: \"100\"}"
            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001, listener: quoted) + p2("20MiB/s"))
            check("the number quoted: the same text, a string now")
            #expect(outcomes.last?.contains { $0.contains("expected an integer") } == true, "\(outcomes.last ?? [])")
            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001, listener: plain) + p2("20MiB/s"))
            check("plain again")

            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001) + p2("20MiB/s") + Self.forward("p3", port: 20003))
            try folder.write("pipelines.d/b.yaml", "pipelines: {}\n")
            check("a pipeline moved to another file")

            try folder.write("pipelines.d/b.yaml", "pipelines:\n" + Self.forward("p4", port: 20001))
            check("a new pipeline on a port an unchanged one holds")
            #expect(outcomes.last?.contains { $0.contains("overlaps 127.0.0.1:20001 of pipeline \"p1\"") } == true, "\(outcomes.last ?? [])")

            try folder.write("pipelines.d/b.yaml", "pipelines:\n" + Self.forward("p1", port: 20004))
            check("an id an unchanged pipeline holds")
            #expect(outcomes.last?.contains { $0.contains("duplicate pipeline id \"p1\"") } == true, "\(outcomes.last ?? [])")

            try folder.write("pipelines.d/b.yaml", "pipelines:\n" + Self.forward("p4", port: 20004))
            let wrong = "{type: listen.tcp, address: \"127.0.0.1:20001\", colour: blue}"
            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001, listener: wrong) + p2("20MiB/s"))
            check("an unknown key in a stage that was valid")
            #expect(outcomes.last?.contains { $0.contains("colour") } == true, "\(outcomes.last ?? [])")

            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p1", port: 20001) + p2("20MiB/s"))
            check("the error fixed")
            try folder.write("pipelines.d/a.yaml", "pipelines:\n" + Self.forward("p2", port: 20001) + Self.forward("p1", port: 20002, middle: "{type: limit.bandwidth, rate: 20MiB/s}"))
            check("two pipelines swapped their ids")
        }
    }

    @Test("A stage that read named lists or files is decoded again when only those changed")
    func contentIsReadAgain() throws {
        try Folder.with { folder in
            let loader = ConfigLoader(registry: BuiltinStages.registry)
            func fingerprints() throws -> [String: String] {
                let reloaded = try loader.load(path: folder.main).pipelines
                let fresh = try ConfigLoader(registry: BuiltinStages.registry).load(path: folder.main).pipelines
                #expect(reloaded.map(\.fingerprint) == fresh.map(\.fingerprint))
                return Dictionary(uniqueKeysWithValues: reloaded.map { ($0.id, $0.fingerprint) })
            }
            try folder.write("pipelines.d/egress.yaml", """
                pipelines:
                  egress:
                    stages:
                      - type: enforce.nftables
                        allow_destinations: { interfaces: [eth1], lists: [corp] }

                """)
            try folder.write("pipelines.d/lists.yaml", "lists:\n  corp:\n    entries: [1.1.1.1]\n")
            try folder.copy(Self.tlsExample + "/exit.pem", to: "cert.pem")
            try folder.copy(Self.tlsExample + "/exit.key", to: "key.pem")
            try folder.write("pipelines.d/tls.yaml", "pipelines:\n" + Self.forward(
                "tls", port: 20010, middle: "{type: transform.tls, side: server, certificate: \(folder.path)/cert.pem, key: \(folder.path)/key.pem}"))
            let first = try fingerprints()

            try folder.write("pipelines.d/lists.yaml", "lists:\n  corp:\n    entries: [1.1.1.1, 1.0.0.1]\n")
            let listEdited = try fingerprints()
            #expect(listEdited["egress"] != first["egress"], "the list's new entry reaches the stage")
            #expect(listEdited["tls"] == first["tls"])

            try folder.copy(Self.tlsExample + "/entry.pem", to: "cert.pem")
            try folder.copy(Self.tlsExample + "/entry.key", to: "key.pem")
            let renewed = try fingerprints()
            #expect(renewed["tls"] != listEdited["tls"], "a renewed certificate reaches the stage")
            #expect(renewed["egress"] == listEdited["egress"])

            try folder.remove("key.pem")
            #expect(throws: ConfigErrors.self, "a key file that went away is an error, not a reused decode") { try loader.load(path: folder.main) }
        }
    }
}
