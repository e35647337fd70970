import Foundation
import Testing
import WeirCore
import WeirStages

@testable import WeirTransforms

/// transform.tls options: files checked at load time with their locations, side-specific keys, and the
/// fingerprint that follows the files' contents. Uses the example credentials in the stage's folder.
@Suite struct TransformTLSConfigTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)
    static let example = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("plugins/transforms/tls/example")

    func pipeline(_ tlsOptions: String, file: String = "p.yaml") -> String {
        """
        pipelines:
          t:
            stages:
              - type: listen.tcp
                address: 127.0.0.1:9443
              - type: transform.tls
        \(tlsOptions.split(separator: "\n").map { "        " + $0 }.joined(separator: "\n"))
              - type: connect.tcp
                addresses: [127.0.0.1:9000]
        """
    }

    func errors(_ yaml: String, name: String = "p.yaml") -> [String] {
        do {
            _ = try loader.loadPipelines(yaml: yaml, name: name)
            Issue.record("expected errors")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func relativePathsAreTakenFromTheYAMLFilesFolder() throws {
        let yaml = pipeline("side: server\ncertificate: example/exit.pem\nkey: example/exit.key\nclient_ca: example/ca.pem")
        let name = Self.example.deletingLastPathComponent().appendingPathComponent("t.yaml").path
        let pipelines = try loader.loadPipelines(yaml: yaml, name: name)
        let config = try #require(pipelines.first?.stages[1].config as? TransformTLSConfig)
        #expect(config.side == .server)
        #expect(config.contentFingerprint.count == 64)
    }

    @Test func missingFilesAndMismatchedKeysAreErrorsAtTheirKeys() {
        let dir = Self.example.path
        let missing = errors(pipeline("side: server\ncertificate: \(dir)/nope.pem\nkey: \(dir)/exit.key"))
        #expect(missing == ["p.yaml:8:22: pipelines.t.stages[1] (transform.tls): certificate: cannot read \(dir)/nope.pem"], "\(missing)")
        let notACertificate = errors(pipeline("side: server\ncertificate: \(dir)/exit.key\nkey: \(dir)/exit.key"))
        #expect(notACertificate.count == 1 && notACertificate[0].contains("certificate: \(dir)/exit.key is not a PEM certificate file"), "\(notACertificate)")
        let mismatched = errors(pipeline("side: server\ncertificate: \(dir)/entry.pem\nkey: \(dir)/exit.key"))
        #expect(mismatched.count == 1 && mismatched[0].hasPrefix("p.yaml:9:14: pipelines.t.stages[1] (transform.tls): key: TLS setup failed"), "\(mismatched)")
    }

    @Test func sideSpecificKeysAreChecked() {
        let dir = Self.example.path
        #expect(errors(pipeline("side: server")) == ["p.yaml:6:9: pipelines.t.stages[1] (transform.tls): side: server needs certificate and key"])
        let caOnServer = errors(pipeline("side: server\ncertificate: \(dir)/exit.pem\nkey: \(dir)/exit.key\nca: \(dir)/ca.pem\nserver_name: x.example"))
        #expect(caOnServer.contains { $0.hasSuffix("ca: ca only applies to side: client") }, "\(caOnServer)")
        #expect(caOnServer.contains { $0.hasSuffix("server_name: server_name only applies to side: client") }, "\(caOnServer)")
        let clientCAOnClient = errors(pipeline("side: client\nclient_ca: \(dir)/ca.pem"))
        #expect(clientCAOnClient.count == 1 && clientCAOnClient[0].hasSuffix("client_ca: client_ca only applies to side: server"), "\(clientCAOnClient)")
        let keyWithoutCertificate = errors(pipeline("side: client\nkey: \(dir)/entry.key"))
        #expect(keyWithoutCertificate.count == 1 && keyWithoutCertificate[0].hasSuffix("key needs certificate"), "\(keyWithoutCertificate)")
        let badName = errors(pipeline("side: client\nserver_name: \"bad name\""))
        #expect(badName.count == 1 && badName[0].hasSuffix("server_name: must be a host name"), "\(badName)")
    }

    @Test func theFingerprintFollowsTheFilesContents() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let name = folder.appendingPathComponent("t.yaml").path
        let yaml = pipeline("side: server\ncertificate: cert.pem\nkey: key.pem")
        func fingerprint() throws -> String { try loader.loadPipelines(yaml: yaml, name: name)[0].fingerprint }

        try FileManager.default.copyItem(atPath: Self.example.appendingPathComponent("exit.pem").path, toPath: folder.appendingPathComponent("cert.pem").path)
        try FileManager.default.copyItem(atPath: Self.example.appendingPathComponent("exit.key").path, toPath: folder.appendingPathComponent("key.pem").path)
        let first = try fingerprint()
        #expect(try fingerprint() == first, "unchanged files, unchanged pipeline")
        try FileManager.default.removeItem(at: folder.appendingPathComponent("cert.pem"))
        try FileManager.default.removeItem(at: folder.appendingPathComponent("key.pem"))
        try FileManager.default.copyItem(atPath: Self.example.appendingPathComponent("entry.pem").path, toPath: folder.appendingPathComponent("cert.pem").path)
        try FileManager.default.copyItem(atPath: Self.example.appendingPathComponent("entry.key").path, toPath: folder.appendingPathComponent("key.pem").path)
        #expect(try fingerprint() != first, "a renewed certificate changes the pipeline, so SIGHUP restarts it")
    }
}
