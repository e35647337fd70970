import Foundation

/// A throwaway certificate authority made with the openssl command, and leaf certificates it issues, in a
/// temporary folder removed with the value.
final class TestPKI: @unchecked Sendable {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-pki-\(UUID().uuidString)")
    var caPath: String { path("ca.pem") }

    init(caName: String = "weir test CA") throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=\(caName)", "-keyout", path("ca.key"), "-out", caPath,
        ])
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    func path(_ file: String) -> String { directory.appendingPathComponent(file).path }

    /// Issues `<name>.pem` and `<name>.key`: a server certificate for the DNS names and IP addresses given,
    /// or a client certificate. Returns (certificate, key) paths.
    @discardableResult
    func issue(_ name: String, dnsNames: [String] = [], ipAddresses: [String] = [], client: Bool = false, days: Int = 2) throws -> (String, String) {
        let certificate = path("\(name).pem"), key = path("\(name).key"), request = path("\(name).csr"), extensions = path("\(name).ext")
        try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=\(name)", "-keyout", key, "-out", request])
        var lines = ["extendedKeyUsage=\(client ? "clientAuth" : "serverAuth")"]
        let names = dnsNames.map { "DNS:\($0)" } + ipAddresses.map { "IP:\($0)" }
        if !names.isEmpty { lines.append("subjectAltName=" + names.joined(separator: ",")) }
        try lines.joined(separator: "\n").write(toFile: extensions, atomically: true, encoding: .utf8)
        try openssl([
            "x509", "-req", "-in", request, "-CA", caPath, "-CAkey", path("ca.key"), "-CAcreateserial", "-days", "\(days)",
            "-extfile", extensions, "-out", certificate,
        ])
        return (certificate, key)
    }

    /// The certificate's notAfter as Unix time, as openssl reads it.
    func notAfter(_ certificate: String) throws -> Int {
        let (status, output) = try command(["/bin/sh", "-c", "date -d \"$(openssl x509 -noout -enddate -in '\(certificate)' | cut -d= -f2)\" +%s"])
        guard status == 0, let seconds = Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw CommandFailed(command: "openssl x509 -enddate", status: status, output: output)
        }
        return seconds
    }

    private func openssl(_ arguments: [String]) throws {
        let (status, output) = try command([which("openssl") ?? "/usr/bin/openssl"] + arguments)
        guard status == 0 else { throw CommandFailed(command: "openssl \(arguments.first ?? "")", status: status, output: output) }
    }
}
