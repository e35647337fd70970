import Foundation
import Testing

/// The real `weir` binary, run against a configuration written to a temporary folder.
final class WeirProcess: @unchecked Sendable {
    static var binary: String {
        if let path = ProcessInfo.processInfo.environment["WEIR_BIN"] { return path }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/weir").path
    }

    let directory: URL
    let metricsPort: Int
    /// The network namespace the agent runs in (`ip netns exec`); nil for the test's own.
    let netns: String?
    /// A command the agent runs under, e.g. `prlimit --nofile=64:64 --`.
    let launcher: [String]
    private var process: Process?
    private let stderrFile: URL

    var configPath: String { directory.appendingPathComponent("weir.yaml").path }

    /// Writes `weir.yaml` with the metrics endpoint on a free port, and `pipelines` as `pipelines.d/main.yaml`.
    init(
        pipelines: String, extra: String = "", netns: String? = nil, bpfPinDir: String? = nil, id: String = "test-agent",
        launcher: [String] = [], agentOptions: [String] = [], metricsOptions: [String] = [], metricsHost: String = "127.0.0.1", logFormat: String = "text"
    ) throws {
        self.netns = netns
        self.launcher = launcher
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("pipelines.d"), withIntermediateDirectories: true)
        metricsPort = freePort()
        stderrFile = directory.appendingPathComponent("stderr.log")
        let main = """
            agent:
              id: \(id)
              state_dir: \(directory.path)
              shutdown_grace: 3s
            \(agentOptions.map { "  \($0)" }.joined(separator: "\n"))
            \(bpfPinDir.map { "  bpf_pin_dir: \($0)" } ?? "")
            metrics:
              listen: \(metricsHost):\(metricsPort)
            \(metricsOptions.map { "  \($0)" }.joined(separator: "\n"))
            log:
              level: debug
              format: \(logFormat)
            \(extra)
            """
        try main.write(toFile: configPath, atomically: true, encoding: .utf8)
        try writePipelines(pipelines)
    }

    deinit {
        if let process, process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(at: directory)
    }

    func writePipelines(_ yaml: String, file: String = "main.yaml") throws {
        try yaml.write(to: directory.appendingPathComponent("pipelines.d/\(file)"), atomically: true, encoding: .utf8)
    }

    /// Starts the agent and (unless `wait` is false) waits until `/healthz` answers.
    func start(wait: Bool = true) throws {
        let process = Process()
        if let netns {
            // `ip netns exec` execs the agent, so the process is the agent and signals reach it.
            process.executableURL = URL(fileURLWithPath: which("ip") ?? "/usr/sbin/ip")
            process.arguments = ["netns", "exec", netns, Self.binary, "agent", "--config", configPath]
        } else if let tool = launcher.first {
            process.executableURL = URL(fileURLWithPath: which(tool) ?? tool)
            process.arguments = Array(launcher.dropFirst()) + [Self.binary, "agent", "--config", configPath]
        } else {
            process.executableURL = URL(fileURLWithPath: Self.binary)
            process.arguments = ["agent", "--config", configPath]
        }
        _ = FileManager.default.createFile(atPath: stderrFile.path, contents: nil)
        process.standardError = try FileHandle(forWritingTo: stderrFile)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        self.process = process
        guard wait else { return }
        let deadline = Date().addingTimeInterval(15)
        while Date() < deadline {
            if !process.isRunning { throw AgentFailed(log: log) }
            // Started once /healthz answers: 200, or 503 with the problems it already sees.
            if let (status, _) = try? httpRequest("/healthz"), status == 200 || status == 503 { return }
            usleep(50_000)
        }
        throw AgentFailed(log: "agent did not answer /healthz\n" + log)
    }

    var pid: Int32 { process?.processIdentifier ?? 0 }

    var log: String { (try? String(contentsOf: stderrFile, encoding: .utf8)) ?? "" }

    func signal(_ signal: Int32) { if let process { kill(process.processIdentifier, signal) } }

    /// Sends SIGHUP and waits until the reload counter moves.
    func reload() throws {
        let before = reloadCount()
        signal(SIGHUP)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            if reloadCount() > before { return }
            usleep(50_000)
        }
        throw AgentFailed(log: "reload did not complete\n" + log)
    }

    private func reloadCount() -> Double {
        let metrics = (try? self.metrics()) ?? ""
        return (value(in: metrics, "weir_config_reloads_total", ["result": "success"]) ?? 0)
            + (value(in: metrics, "weir_config_reloads_total", ["result": "failure"]) ?? 0)
    }

    /// Waits for the process to end; nil if it is still running after `timeout`.
    func waitForExit(timeout: TimeInterval) -> Int32? {
        guard let process else { return nil }
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    func stop() {
        signal(SIGTERM)
        if waitForExit(timeout: 10) == nil { signal(SIGKILL) }
    }

    /// kill -9, and waits until the process is gone.
    func kill9() {
        signal(SIGKILL)
        _ = waitForExit(timeout: 10)
    }

    func metrics() throws -> String { try httpGet("/metrics") }

    /// A sample's value from the exposition, matching every given label.
    func metric(_ name: String, _ labels: [String: String] = [:]) throws -> Double? {
        value(in: try metrics(), name, labels)
    }

    /// Polls until the sample satisfies `condition`, for counters updated asynchronously.
    func waitForMetric(_ name: String, _ labels: [String: String] = [:], timeout: TimeInterval = 5, _ condition: (Double?) -> Bool) throws -> Double? {
        let deadline = Date().addingTimeInterval(timeout)
        var current = try metric(name, labels)
        while !condition(current), Date() < deadline {
            usleep(50_000)
            current = try metric(name, labels)
        }
        return current
    }

    /// The body of a 200 answer from the metrics port; anything else throws.
    func httpGet(_ path: String) throws -> String {
        let (status, body) = try httpRequest(path)
        guard status == 200 else { throw AgentFailed(log: "GET \(path): \(status) \(body.prefix(200))") }
        return body
    }

    /// `/healthz`: its status and body.
    func health() throws -> (Int, String) { try httpRequest("/healthz") }

    /// A GET to the metrics port: (status, body).
    func httpRequest(_ path: String) throws -> (Int, String) {
        if let netns {
            let (status, output) = try command([
                which("ip") ?? "/usr/sbin/ip", "netns", "exec", netns, "curl", "-s", "--max-time", "5", "-w", "\n%{http_code}",
                "http://127.0.0.1:\(metricsPort)\(path)",
            ])
            guard status == 0, let split = output.lastIndex(of: "\n"), let code = Int(output[output.index(after: split)...]) else {
                throw AgentFailed(log: "GET \(path) in \(netns): curl exit \(status)")
            }
            return (code, String(output[..<split]))
        }
        let client = try TCPClient(port: metricsPort, timeout: 5)
        try client.send("GET \(path) HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        let response = String(decoding: try client.receiveAll(), as: UTF8.self)
        let fields = response.split(separator: " ", maxSplits: 2)
        guard response.hasPrefix("HTTP/1.1 "), fields.count >= 2, let status = Int(fields[1]), let split = response.range(of: "\r\n\r\n") else {
            throw AgentFailed(log: "GET \(path): \(response.prefix(200))")
        }
        return (status, String(response[split.upperBound...]))
    }
}

struct AgentFailed: Error, CustomStringConvertible {
    let log: String
    var description: String { "weir agent failed:\n\(log)" }
}

/// Parses one sample of the Prometheus text format.
func value(in exposition: String, _ name: String, _ labels: [String: String]) -> Double? {
    for line in exposition.split(separator: "\n") where line.hasPrefix(name) && !line.hasPrefix("#") {
        let rest = line.dropFirst(name.count)
        guard rest.first == "{" || rest.first == " " else { continue }
        var sampleLabels: [String: String] = [:]
        if rest.first == "{", let close = rest.firstIndex(of: "}") {
            for pair in rest[rest.index(after: rest.startIndex)..<close].split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { sampleLabels[String(parts[0])] = String(parts[1].dropFirst().dropLast()) }
            }
        }
        guard labels.allSatisfy({ sampleLabels[$0.key] == $0.value }) else { continue }
        return line.split(separator: " ").last.flatMap { Double($0) }
    }
    return nil
}

/// Runs `weir` with arguments and returns its exit status and combined output.
func runWeir(_ arguments: [String]) throws -> (status: Int32, output: String) {
    try command([WeirProcess.binary] + arguments)
}

/// Runs a program (looked up in PATH) and returns its exit status and combined output.
///
/// Spawned and reaped here (posix_spawn, waitpid) rather than with Foundation's `Process`: with suites
/// starting processes on several threads, `Process.waitUntilExit()` sometimes never returns although the child
/// has exited (seen as a defunct `tc` and a test run that hung).
func command(_ arguments: [String]) throws -> (status: Int32, output: String) {
    let absolute = arguments[0].hasPrefix("/")
    let path = absolute ? arguments[0] : "/usr/bin/env"
    let argv = absolute ? arguments : ["env"] + arguments
    var pipe: [Int32] = [-1, -1]
    // Close-on-exec from the start (a socket pair, as Swift's Glibc has no pipe2), so no child spawned
    // meanwhile by another thread holds the write end open.
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pipe) == 0 else {
        throw SpawnFailed(command: arguments, error: errno)
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, pipe[1], 2)
    let cArguments = argv.map { strdup($0) } + [nil]
    defer { for argument in cArguments { free(argument) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, path, &actions, nil, cArguments, environ)
    close(pipe[1])
    guard spawned == 0 else {
        close(pipe[0])
        throw SpawnFailed(command: arguments, error: spawned)
    }
    var output: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(pipe[0], &buffer, buffer.count)
        if count > 0 {
            output += buffer[0..<count]
        } else if count < 0, errno == EINTR {
            continue
        } else {
            break
        }
    }
    close(pipe[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0, errno == EINTR {}
    // Exited: the code; killed: 128 + the signal, as a shell reports it.
    let exitStatus = status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F)
    return (exitStatus, String(decoding: output, as: UTF8.self))
}

struct SpawnFailed: Error, CustomStringConvertible {
    let command: [String]
    let error: Int32
    var description: String { "cannot run \(command.joined(separator: " ")): \(String(cString: strerror(error)))" }
}

/// Resident memory of a process in KiB.
func residentKiB(pid: Int32) -> Int? {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1])
    }
    return nil
}

/// A drop-in with one TCP forward pipeline: `listen.tcp` on 127.0.0.1:`port` to the given loopback ports.
func tcpForward(_ id: String, port: Int, to targets: [Int], extraStages: String = "") -> String {
    """
    pipelines:
    \(tcpForwardEntry(id, port: port, to: targets, extraStages: extraStages))
    """
}

/// One pipeline entry of a `pipelines:` map, indented to sit under it; `targetHost` the targets' host (an
/// address, or a name to resolve).
func tcpForwardEntry(_ id: String, port: Int, to targets: [Int], targetHost: String = "127.0.0.1", extraStages: String = "") -> String {
    """
      \(id):
        stages:
          - type: listen.tcp
            address: 127.0.0.1:\(port)
    \(extraStages)      - type: connect.tcp
            addresses: [\(targets.map { "\(targetHost):\($0)" }.joined(separator: ", "))]

    """
}

/// A drop-in with one UDP forward pipeline; `connectOptions` are extra `connect.udp` lines, `targetHost` the
/// targets' host (an address, or a name to resolve).
func udpForward(
    _ id: String, port: Int, to targets: [Int], targetHost: String = "127.0.0.1", extraStages: String = "", connectOptions: String = ""
) -> String {
    """
    pipelines:
    \(udpForwardEntry(id, port: port, to: targets, targetHost: targetHost, extraStages: extraStages, connectOptions: connectOptions))
    """
}

/// One UDP forward entry of a `pipelines:` map, indented to sit under it.
func udpForwardEntry(
    _ id: String, port: Int, to targets: [Int], targetHost: String = "127.0.0.1", extraStages: String = "", connectOptions: String = ""
) -> String {
    """
      \(id):
        stages:
          - type: listen.udp
            address: 127.0.0.1:\(port)
    \(extraStages)      - type: connect.udp
            addresses: [\(targets.map { "\(targetHost):\($0)" }.joined(separator: ", "))]
    \(connectOptions)
    """
}

/// `promtool check metrics` on an exposition: its exit status and report.
func promtoolCheck(_ exposition: String) throws -> (status: Int32, report: String) {
    let promtool = Process()
    promtool.executableURL = URL(fileURLWithPath: which("promtool") ?? "/usr/bin/promtool")
    promtool.arguments = ["check", "metrics"]
    let input = Pipe(), output = Pipe()
    promtool.standardInput = input
    promtool.standardOutput = output
    promtool.standardError = output
    try promtool.run()
    input.fileHandleForWriting.write(Data(exposition.utf8))
    try input.fileHandleForWriting.close()
    let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    promtool.waitUntilExit()
    return (promtool.terminationStatus, report)
}

/// A helper process in the background, spawned and reaped without Foundation's `Process` (see `command`):
/// output to /dev/null; `stop()` kills and reaps it (also on deinit).
final class BackgroundCommand: @unchecked Sendable {
    let pid: pid_t
    private var reaped = false

    /// `stderr`: a file for the command's error output (else /dev/null).
    init(_ arguments: [String], stderr: String? = nil) throws {
        let absolute = arguments[0].hasPrefix("/")
        let path = absolute ? arguments[0] : "/usr/bin/env"
        let argv = absolute ? arguments : ["env"] + arguments
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        let cArguments = argv.map { strdup($0) } + [nil]
        defer { for argument in cArguments { free(argument) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, path, &actions, nil, cArguments, environ)
        guard spawned == 0 else { throw SpawnFailed(command: arguments, error: spawned) }
        self.pid = pid
    }

    /// Whether it is still running (not reaped, not exited).
    var isRunning: Bool {
        guard !reaped else { return false }
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == pid {
            reaped = true
            return false
        }
        return true
    }

    func stop() {
        guard !reaped else { return }
        kill(pid, SIGKILL)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        reaped = true
    }

    deinit { stop() }
}
