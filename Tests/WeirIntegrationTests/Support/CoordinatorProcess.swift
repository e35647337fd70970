import Foundation
import Testing

/// The real `weir coordinator`, on loopback with a test CA's certificate; its API reached with curl.
final class CoordinatorProcess: @unchecked Sendable {
    let directory: URL
    let port: Int
    let pki: TestPKI
    /// The network namespace it runs in (its agents and curl run there too); nil: the host's.
    let netns: String?
    private var process: Process?
    var pid: Int32 { process?.processIdentifier ?? 0 }
    private let logFile: URL

    var configPath: String { directory.appendingPathComponent("coordinator.yaml").path }
    var url: String { "https://localhost:\(port)" }
    var agentURL: String { "wss://localhost:\(port)" }
    var adminToken: String {
        (try? String(contentsOf: directory.appendingPathComponent("state/admin.token"), encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
    }

    /// `database` is `sqlite` (a file in the state folder) or a postgres:// URL; `settings` are more lines of the
    /// `coordinator:` section.
    init(
        pki: TestPKI, database: String = "sqlite", heartbeat: String = "500ms", offlineAfter: String = "2s", retention: String = "168h",
        port: Int = freePort(), settings: [String] = [], certificateAddresses: [String] = ["127.0.0.1"], netns: String? = nil
    ) throws {
        self.pki = pki
        self.port = port
        self.netns = netns
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-coordinator-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        logFile = directory.appendingPathComponent("coordinator.log")
        if !FileManager.default.fileExists(atPath: pki.path("coordinator.pem")) {
            try pki.issue("coordinator", dnsNames: ["localhost"], ipAddresses: certificateAddresses)
        }
        try """
            coordinator:
              listen: 127.0.0.1:\(port)
              state_dir: \(directory.path)/state
              database: \(database)
              tls: { certificate: \(pki.path("coordinator.pem")), key: \(pki.path("coordinator.key")) }
              heartbeat_interval: \(heartbeat)
              offline_after: \(offlineAfter)
              retention: \(retention)
            \(settings.map { "  \($0)\n" }.joined())log: { level: debug }
            """.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    deinit {
        if let process, process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }

    /// Starts and waits until /healthz answers over TLS.
    func start() throws {
        let process = Process()
        if let netns {
            process.executableURL = URL(fileURLWithPath: which("ip") ?? "/usr/sbin/ip")
            process.arguments = ["netns", "exec", netns, WeirProcess.binary, "coordinator", "--config", configPath]
        } else {
            process.executableURL = URL(fileURLWithPath: WeirProcess.binary)
            process.arguments = ["coordinator", "--config", configPath]
        }
        if !FileManager.default.fileExists(atPath: logFile.path) { _ = FileManager.default.createFile(atPath: logFile.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: logFile)
        handle.seekToEndOfFile()
        process.standardError = handle
        process.standardOutput = handle
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if !process.isRunning { throw AgentFailed(log: "coordinator exited\n" + log) }
            if let (status, _) = try? request("GET", "/healthz", token: nil), status == 200 { return }
            usleep(100_000)
        }
        throw AgentFailed(log: "coordinator did not become healthy\n" + log)
    }

    func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(10)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    var log: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// One API call: (HTTP status, body). `token` nil sends no Authorization header.
    func request(
        _ method: String, _ path: String, body: String? = nil, contentType: String = "application/json", token: String?,
        extraHeaders: [String] = []
    ) throws -> (Int, String) {
        var arguments = (netns.map { ["ip", "netns", "exec", $0] } ?? [])
            + ["curl", "-s", "--max-time", "10", "--cacert", pki.caPath, "-X", method, "-w", "\n%{http_code}", url + path]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        for header in extraHeaders { arguments += ["-H", header] }
        if let body { arguments += ["-H", "Content-Type: \(contentType)", "--data-binary", body] }
        let (status, output) = try command(arguments)
        guard status == 0, let split = output.lastIndex(of: "\n"), let code = Int(output[output.index(after: split)...]) else {
            throw CommandFailed(command: "curl \(method) \(path)", status: status, output: output)
        }
        return (code, String(output[..<split]))
    }

    /// A sample's value from the coordinator's /metrics, matching every given label.
    func metric(_ name: String, _ labels: [String: String] = [:]) throws -> Double? {
        value(in: try request("GET", "/metrics", token: nil).1, name, labels)
    }

    /// An admin call that must succeed; returns the parsed JSON.
    @discardableResult
    func admin(_ method: String, _ path: String, json: Any? = nil, yaml: String? = nil) throws -> Any {
        let body: String? = try json.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) } ?? yaml
        let (status, text) = try request(method, path, body: body, contentType: yaml == nil ? "application/json" : "application/yaml", token: adminToken)
        guard (200..<300).contains(status) else { throw CommandFailed(command: "\(method) \(path)", status: Int32(status), output: text) }
        return text.isEmpty ? [:] : try JSONSerialization.jsonObject(with: Data(text.utf8))
    }

    func enrollmentToken(labels: [String: String] = [:], uses: Int? = nil) throws -> String {
        var body: [String: Any] = ["labels": labels]
        if let uses { body["uses"] = uses }
        return try (admin("POST", "/api/v1/enrollment-tokens", json: body) as? [String: Any])?["token"] as? String ?? ""
    }

    func agent(_ id: String) throws -> [String: Any]? {
        try (admin("GET", "/api/v1/agents") as? [[String: Any]])?.first { $0["id"] as? String == id }
    }

    /// The `coordinator:` section for an agent's weir.yaml, with its enrollment token in a file.
    func agentSection(token: String, labels: [String: String], agent: String, url: String? = nil) throws -> String {
        let tokenFile = directory.appendingPathComponent("enroll-\(agent).token")
        try token.write(to: tokenFile, atomically: true, encoding: .utf8)
        return """
            coordinator:
              url: \(url ?? agentURL)
              token_file: \(tokenFile.path)
              ca: \(pki.caPath)
              labels: {\(labels.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))}
            """
    }
}

/// VPN devices created all at once through one or several coordinator instances of one database: their
/// addresses, which must all differ.
enum VPNAllocation {
    /// A server with a pool of `poolPrefix` and a user `u`; then `count` devices at once, round robin over the
    /// instances. Returns (HTTP status, first address or body) per device.
    static func createConcurrently(_ instances: [CoordinatorProcess], token: String, count: Int, poolPrefix: Int = 24) throws -> [(Int, String)] {
        let first = instances[0]
        let server = #"{"agent":"nowhere","endpoint":"192.0.2.1:51820","addresses":["10.77.0.1/24"],"pool":["10.77.0.0/\#(poolPrefix)"]}"#
        #expect(try first.request("PUT", "/api/v1/vpn/servers/load", body: server, token: token).0 == 201)
        #expect(try first.request("PUT", "/api/v1/vpn/users/u", body: "{}", token: token).0 == 201)
        let lock = NSLock()
        nonisolated(unsafe) var results = [(Int, String)](repeating: (0, ""), count: count)
        DispatchQueue.concurrentPerform(iterations: count) { index in
            let instance = instances[index % instances.count]
            let body = #"{"name":"d\#(index)","server":"load"}"#
            let result = (try? instance.request("POST", "/api/v1/vpn/users/u/devices", body: body, token: token)) ?? (0, "curl failed")
            let address = ((try? JSONSerialization.jsonObject(with: Data(result.1.utf8))) as? [String: Any])?["addresses"] as? [String]
            lock.withLock { results[index] = (result.0, address?.first ?? result.1) }
        }
        return results
    }
}
