import Foundation
import Testing
import WeirCore
import WeirStages

/// A configuration folder under the system temp directory, removed when the test body returns.
struct ConfigFolder {
    let path: String

    var mainFile: String { path + "/weir.yaml" }

    /// Writes `text` to `relative` (creating folders) and returns the absolute path.
    @discardableResult
    func write(_ relative: String, _ text: String) throws -> String {
        let file = path + "/" + relative
        let folder = (file as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        return file
    }

    static func with<T>(_ body: (ConfigFolder) throws -> T) throws -> T {
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("weir-core-tests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try body(ConfigFolder(path: path))
    }
}

let loader = ConfigLoader(registry: BuiltinStages.registry)

/// The diagnostics of a load that must fail; records an issue when it succeeds.
func loadErrors(_ path: String, sourceLocation: Testing.SourceLocation = #_sourceLocation) -> [ConfigDiagnostic] {
    do {
        let config = try loader.load(path: path)
        Issue.record("expected configuration errors, loaded \(config.pipelines.count) pipelines", sourceLocation: sourceLocation)
        return []
    } catch {
        return error.diagnostics
    }
}

/// The diagnostics of a standalone drop-in that must fail.
func pipelineErrors(_ yaml: String, name: String = "drop-in.yaml", sourceLocation: Testing.SourceLocation = #_sourceLocation)
    -> [ConfigDiagnostic]
{
    do {
        let pipelines = try loader.loadPipelines(yaml: yaml, name: name)
        Issue.record("expected configuration errors, got \(pipelines.map(\.id))", sourceLocation: sourceLocation)
        return []
    } catch {
        return error.diagnostics
    }
}

/// A minimal valid TCP forward pipeline body (indented for `pipelines.ID:`).
func tcpForward(listen: String, to target: String = "127.0.0.1:80") -> String {
    """
        stages:
          - type: listen.tcp
            address: "\(listen)"
          - type: connect.tcp
            addresses: [\(target)]

    """
}
