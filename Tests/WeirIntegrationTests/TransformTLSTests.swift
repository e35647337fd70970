import Foundation
import Testing

/// transform.tls against `openssl s_client`, and weir on both ends of a TLS connection, with certificates from a
/// throwaway CA. Everything stays on loopback.
@Suite(
    "transform.tls with openssl s_client and weir pairs", .serialized,
    .enabled(if: which("openssl") != nil, "needs openssl installed"))
struct TransformTLSTests {
    static let name = "tls.weir.test"

    /// A server-side agent: TLS terminated on `port`, then the echo backend.
    static func server(_ pki: TestPKI, backend: Int, options: String = "") throws -> (WeirProcess, Int) {
        let port = freePort()
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  tls-in:
                    stages:
                      - type: listen.tcp
                        address: 127.0.0.1:\(port)
                      - type: transform.tls
                        side: server
                        certificate: \(pki.path("server.pem"))
                        key: \(pki.path("server.key"))
                \(options.split(separator: "\n").map { "        " + $0 }.joined(separator: "\n"))
                      - type: connect.tcp
                        addresses: [127.0.0.1:\(backend)]
                """)
        try agent.start()
        return (agent, port)
    }

    /// Runs `openssl s_client`, sends `line`, keeps the connection a moment for the answer, and returns what it
    /// printed (handshake summary and the data received).
    static func sClient(port: Int, _ options: [String] = [], line: String) throws -> (status: Int32, output: String) {
        let arguments = (["-connect", "127.0.0.1:\(port)", "-servername", name, "-verify_return_error"] + options).joined(separator: " ")
        return try command(["/bin/sh", "-c", "(printf '\(line)\\n'; sleep 1) | timeout 10 \(which("openssl")!) s_client \(arguments) 2>&1"])
    }

    @Test("openssl s_client completes TLS 1.3 and 1.2 handshakes, verifies the chain and the name, and the data is echoed")
    func sClientHandshake() throws {
        let pki = try TestPKI()
        try pki.issue("server", dnsNames: [Self.name])
        let echo = try Backends.echo()
        let (agent, port) = try Self.server(pki, backend: echo.port)
        defer { agent.stop() }
        for version in ["-tls1_3", "-tls1_2"] {
            let result = try Self.sClient(port: port, ["-CAfile", pki.caPath, version], line: "hello over \(version)")
            #expect(result.output.contains("Verify return code: 0 (ok)"), "\(result.output)")
            #expect(result.output.contains(version == "-tls1_3" ? "TLSv1.3" : "TLSv1.2"), "\(result.output)")
            #expect(result.output.contains("hello over \(version)"), "the echo came back through TLS: \(result.output)")
        }
        // A client that trusts another CA refuses the certificate.
        let other = try TestPKI(caName: "other CA")
        let refused = try Self.sClient(port: port, ["-CAfile", other.caPath], line: "not sent")
        #expect(refused.status != 0 && !refused.output.contains("Verify return code: 0 (ok)"), "\(refused.output)")
    }

    @Test("min_version 1.3 refuses a TLS 1.2 client")
    func minimumVersion() throws {
        let pki = try TestPKI()
        try pki.issue("server", dnsNames: [Self.name])
        let echo = try Backends.echo()
        let (agent, port) = try Self.server(pki, backend: echo.port, options: "min_version: \"1.3\"")
        defer { agent.stop() }
        let old = try Self.sClient(port: port, ["-CAfile", pki.caPath, "-tls1_2"], line: "old client")
        #expect(!old.output.contains("old client"), "\(old.output)")
        let new = try Self.sClient(port: port, ["-CAfile", pki.caPath, "-tls1_3"], line: "new client")
        #expect(new.output.contains("new client"), "\(new.output)")
    }

    @Test("Mutual TLS: a client without a certificate, or with one from another CA, gets nothing through; with one from client_ca it does")
    func mutualTLS() throws {
        let pki = try TestPKI()
        try pki.issue("server", dnsNames: [Self.name])
        let (clientCert, clientKey) = try pki.issue("client", client: true)
        let other = try TestPKI(caName: "other CA")
        let (strangerCert, strangerKey) = try other.issue("stranger", client: true)
        let echo = try Backends.echo()
        let (agent, port) = try Self.server(pki, backend: echo.port, options: "client_ca: \(pki.caPath)")
        defer { agent.stop() }
        let without = try Self.sClient(port: port, ["-CAfile", pki.caPath], line: "anonymous")
        #expect(!without.output.contains("anonymous"), "\(without.output)")
        let stranger = try Self.sClient(port: port, ["-CAfile", pki.caPath, "-cert", strangerCert, "-key", strangerKey], line: "stranger")
        #expect(!stranger.output.contains("stranger\n"), "\(stranger.output)")
        let member = try Self.sClient(port: port, ["-CAfile", pki.caPath, "-cert", clientCert, "-key", clientKey], line: "member")
        #expect(member.output.contains("member"), "\(member.output)")
        let refusals = try agent.waitForMetric("weir_pipeline_errors_total", ["pipeline": "tls-in", "stage": "transform.tls", "reason": "tls_failed"]) { ($0 ?? 0) >= 2 }
        #expect(refusals == 2, "the two refused handshakes are counted once each")

        // Both files' expiries are exported; a reload without client_ca drops that series.
        let caExpiry = ["pipeline": "tls-in", "stage": "transform.tls", "file": pki.caPath]
        #expect(try agent.metric("weir_tls_certificate_expiry_timestamp_seconds", caExpiry) == Double(try pki.notAfter(pki.caPath)))
        #expect(try agent.metric("weir_tls_certificate_expiry_timestamp_seconds", caExpiry.merging(["file": pki.path("server.pem")]) { $1 }) != nil)
        let (status, report) = try promtoolCheck(try agent.metrics())
        #expect(status == 0, "promtool: \(report)")
        try agent.writePipelines(try String(contentsOf: agent.directory.appendingPathComponent("pipelines.d/main.yaml"), encoding: .utf8).replacingOccurrences(of: "client_ca: \(pki.caPath)", with: ""))
        try agent.reload()
        #expect(try agent.metric("weir_tls_certificate_expiry_timestamp_seconds", caExpiry) == nil)
    }

    /// Two agents: plain TCP in, TLS between them (verified by CA and name, client certificate), plain TCP out.
    static func pair(_ pki: TestPKI, backend: Int, serverName: String = name) throws -> (WeirProcess, Int) {
        let entryPort = freePort(), exitPort = freePort()
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  entry:
                    stages:
                      - type: listen.tcp
                        address: 127.0.0.1:\(entryPort)
                      - type: transform.tls
                        side: client
                        ca: \(pki.caPath)
                        server_name: \(serverName)
                        certificate: \(pki.path("client.pem"))
                        key: \(pki.path("client.key"))
                      - type: connect.tcp
                        addresses: [127.0.0.1:\(exitPort)]
                  exit:
                    stages:
                      - type: listen.tcp
                        address: 127.0.0.1:\(exitPort)
                      - type: transform.tls
                        side: server
                        certificate: \(pki.path("server.pem"))
                        key: \(pki.path("server.key"))
                        client_ca: \(pki.caPath)
                      - type: connect.tcp
                        addresses: [127.0.0.1:\(backend)]
                """)
        try agent.start()
        return (agent, entryPort)
    }

    @Test("weir to weir over mutual TLS: 4 MiB each way byte-exact, half-close passed on; a wrong server_name forwards nothing")
    func weirPair() throws {
        let pki = try TestPKI()
        try pki.issue("server", dnsNames: [Self.name])
        try pki.issue("client", client: true)
        let echo = try Backends.echo()
        let (agent, port) = try Self.pair(pki, backend: echo.port)
        defer { agent.stop() }
        let mismatch = try echoMismatch(port: port, size: 4 << 20, seed: 42)
        #expect(mismatch == nil, "\(mismatch ?? "")")

        let (wrongAgent, wrongPort) = try Self.pair(pki, backend: echo.port, serverName: "other.weir.test")
        defer { wrongAgent.stop() }
        let refused = try TCPClient(port: wrongPort)
        try refused.send("must not arrive")
        // The entry never read "must not arrive" (nothing is read before the next hop is ready), so its
        // close may come as a reset: either way nothing may come back.
        #expect(try refused.receiveUntilClosed().isEmpty, "the entry refused the exit's certificate and closed")
        let failures = try wrongAgent.waitForMetric("weir_pipeline_errors_total", ["pipeline": "entry", "stage": "transform.tls", "reason": "tls_failed"]) { ($0 ?? 0) >= 1 }
        #expect((failures ?? 0) >= 1, "the failed handshake is counted")
    }

    @Test("SIGHUP after renewing the certificate files: new connections get the new certificate, an open one keeps working")
    func certificateReload() throws {
        let pki = try TestPKI()
        try pki.issue("server", dnsNames: [Self.name])
        let echo = try Backends.echo()
        let (agent, port) = try Self.server(pki, backend: echo.port)
        defer { agent.stop() }
        let before = try Self.sClient(port: port, ["-CAfile", pki.caPath], line: "before")
        #expect(before.output.contains("before") && before.output.contains("CN = server") || before.output.contains("CN=server"), "\(before.output)")

        // An open connection through weir (TLS done by an s_client that stays).
        let open = Process()
        open.executableURL = URL(fileURLWithPath: "/bin/sh")
        let fifo = pki.path("stdin"), outFile = pki.path("open.out")
        _ = try command(["/usr/bin/mkfifo", fifo])
        open.arguments = ["-c", "\(which("openssl")!) s_client -connect 127.0.0.1:\(port) -servername \(Self.name) -CAfile \(pki.caPath) -quiet < \(fifo) > \(outFile) 2>&1"]
        try open.run()
        defer { open.stopHelper() }
        let writer = try #require(FileHandle(forWritingAtPath: fifo))
        writer.write("first line\n".data(using: .utf8)!)
        #expect(eventually { ((try? String(contentsOfFile: outFile, encoding: .utf8)) ?? "").contains("first line") })

        // Its expiry is exported for the alert on certificates about to expire.
        let expiry = { try agent.metric("weir_tls_certificate_expiry_timestamp_seconds", ["pipeline": "tls-in", "stage": "transform.tls", "file": pki.path("server.pem")]) }
        #expect(try expiry() == Double(try pki.notAfter(pki.path("server.pem"))))

        // Renew: same paths, a certificate with another subject (valid for 30 days instead of 2).
        let (renewedCert, renewedKey) = try pki.issue("renewed", dnsNames: [Self.name], days: 30)
        try FileManager.default.removeItem(atPath: pki.path("server.pem"))
        try FileManager.default.removeItem(atPath: pki.path("server.key"))
        try FileManager.default.copyItem(atPath: renewedCert, toPath: pki.path("server.pem"))
        try FileManager.default.copyItem(atPath: renewedKey, toPath: pki.path("server.key"))
        try agent.reload()
        let after = try Self.sClient(port: port, ["-CAfile", pki.caPath], line: "after")
        #expect(after.output.contains("after") && (after.output.contains("CN = renewed") || after.output.contains("CN=renewed")), "\(after.output)")
        #expect(try expiry() == Double(try pki.notAfter(renewedCert)))
        #expect(try pki.notAfter(renewedCert) - Int(Date().timeIntervalSince1970) > 29 * 86400)

        writer.write("second line\n".data(using: .utf8)!)
        #expect(eventually { ((try? String(contentsOfFile: outFile, encoding: .utf8)) ?? "").contains("second line") }, "the connection opened before the reload still works")
        try? writer.close()
    }
}
