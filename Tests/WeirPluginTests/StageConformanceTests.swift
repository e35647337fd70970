import Foundation
import Testing
import WeirCore
import WeirStages

/// Every registered stage documents itself, and its sample is a valid drop-in; every plugin folder is documented.
@Suite struct StageConformanceTests {
    static let registry = BuiltinStages.registry
    static let loader = ConfigLoader(registry: registry)
    static let types = registry.all.map { $0.type }

    /// The repository root, three levels above this file (`Tests/WeirPluginTests/<file>`).
    static let repoRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Stage folders: `plugins/<family>/<stage>/`.
    static func stageFolders() throws -> [URL] {
        let plugins = repoRoot.appendingPathComponent("plugins")
        var folders: [URL] = []
        for family in try FileManager.default.contentsOfDirectory(atPath: plugins.path).sorted() {
            let familyURL = plugins.appendingPathComponent(family)
            guard isDirectory(familyURL) else { continue }
            for stage in try FileManager.default.contentsOfDirectory(atPath: familyURL.path).sorted() {
                let stageURL = familyURL.appendingPathComponent(stage)
                if isDirectory(stageURL) { folders.append(stageURL) }
            }
        }
        return folders
    }

    static func isDirectory(_ url: URL) -> Bool {
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &directory) && directory.boolValue
    }

    @Test func registryHoldsTheBuiltinTypes() {
        #expect(Self.types == ["connect.relay", "connect.reverse", "connect.tcp", "connect.udp", "count.ebpf", "dns.filter", "enforce.nftables", "limit.bandwidth", "listen.http", "listen.reverse", "listen.socks5", "listen.tcp", "listen.tls_sni", "listen.udp", "route.gateway", "shape.tc", "transform.aead", "transform.mux", "transform.padding", "transform.tls", "transform.websocket", "wireguard"])
        for type in Self.types {
            #expect(Self.registry[type]?.type == type)
        }
        #expect(Self.registry["listen.sctp"] == nil)
    }

    @Test(arguments: StageConformanceTests.types)
    func typeIsDocumented(type: String) throws {
        let stage = try #require(Self.registry[type])
        // `wireguard` is named after its protocol alone, as its issue names it (a service, like a family of its own).
        #expect(type.split(separator: ".").count == 2 || type == "wireguard", "type names are family.kind")
        #expect(!stage.summary.trimmingCharacters(in: .whitespaces).isEmpty)
        #expect(!stage.summary.contains("\n"), "summary is one line")
        #expect(!stage.options.isEmpty)
        for option in stage.options {
            #expect(!option.name.isEmpty)
            #expect(!option.type.isEmpty)
            #expect(!option.summary.isEmpty, "\(type).\(option.name) has no summary")
        }
        #expect(Set(stage.options.map(\.name)).count == stage.options.count, "option names are unique")
    }

    @Test(arguments: StageConformanceTests.types)
    func sampleIsAValidDropInUsingTheType(type: String) throws {
        let stage = try #require(Self.registry[type])
        #expect(!stage.sample.isEmpty)
        // Loaded as the file in its stage folder, so files it names (example certificates) resolve there.
        let folder = try Self.stageFolders().first { FileManager.default.fileExists(atPath: $0.appendingPathComponent("\(type).sample.yaml").path) }
        let name = folder.map { $0.appendingPathComponent("\(type).sample.yaml").path } ?? "\(type).sample.yaml"
        let pipelines: [PipelineSpec]
        do {
            pipelines = try Self.loader.loadPipelines(yaml: stage.sample, name: name)
        } catch {
            Issue.record("\(type).sample.yaml does not validate:\n\(error)")
            return
        }
        #expect(!pipelines.isEmpty)
        let used = pipelines.flatMap(\.stages).filter { $0.type == type }
        #expect(!used.isEmpty, "\(type).sample.yaml does not use \(type)")
        #expect(used.allSatisfy { Swift.type(of: $0.config).type == type })
    }

    @Test func everyStageFolderHasAReadmeAndTheEmbeddedSample() throws {
        let folders = try Self.stageFolders()
        #expect(folders.count == Self.types.count, "one folder per stage type: \(folders.map(\.lastPathComponent))")
        var covered: Set<String> = []
        for folder in folders {
            let files = try FileManager.default.contentsOfDirectory(atPath: folder.path)
            let samples = files.filter { $0.hasSuffix(".sample.yaml") }
            guard samples.count == 1, let sampleName = samples.first else {
                Issue.record("\(folder.path) must hold exactly one <type>.sample.yaml, has \(samples)")
                continue
            }
            let type = String(sampleName.dropLast(".sample.yaml".count))
            guard let stage = Self.registry[type] else {
                Issue.record("\(folder.path)/\(sampleName) names \(type), which is not registered")
                continue
            }
            covered.insert(type)
            let readme = try String(contentsOf: folder.appendingPathComponent("README.md"), encoding: .utf8)
            #expect(readme.contains(type), "\(folder.lastPathComponent)/README.md does not mention \(type)")
            #expect(readme.contains(sampleName), "\(folder.lastPathComponent)/README.md does not point at \(sampleName)")
            let sampleText = try String(contentsOf: folder.appendingPathComponent(sampleName), encoding: .utf8)
            #expect(sampleText == stage.sample, "\(sampleName) differs from \(type).sample")
        }
        #expect(covered == Set(Self.types))
    }

    @Test func readmeOptionTablesListEveryOption() throws {
        for folder in try Self.stageFolders() {
            let files = try FileManager.default.contentsOfDirectory(atPath: folder.path)
            guard let sampleName = files.first(where: { $0.hasSuffix(".sample.yaml") }),
                let stage = Self.registry[String(sampleName.dropLast(".sample.yaml".count))]
            else { continue }
            let readme = try String(contentsOf: folder.appendingPathComponent("README.md"), encoding: .utf8)
            for option in stage.options {
                #expect(readme.contains("`\(option.name)`"), "\(stage.type) README does not document `\(option.name)`")
            }
        }
    }
}
