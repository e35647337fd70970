import Foundation
import Testing

/// Debian's Prometheus, run with a configuration the test writes (storage and rules in a temporary folder),
/// queried over its HTTP API.
final class PrometheusServer: @unchecked Sendable {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-prometheus-\(UUID().uuidString)")
    let port: Int
    /// The network namespace it runs in (to scrape agents that run in one); nil for the test's own.
    let netns: String?
    private var process: Process?

    static var available: Bool { which("prometheus") != nil }

    /// The repository's root (alert rules, dashboards).
    static var repository: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
    }

    /// `configuration` is prometheus.yml; `files` are written beside it (token and CA files it names).
    init(configuration: String, files: [String: String] = [:], netns: String? = nil) throws {
        port = freePort()
        self.netns = netns
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("data"), withIntermediateDirectories: true)
        try configuration.write(to: directory.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
        for (name, content) in files {
            try content.write(to: directory.appendingPathComponent(name), atomically: true, encoding: .utf8)
            chmod(directory.appendingPathComponent(name).path, 0o600)
        }
    }

    /// A Prometheus started by someone else (`weir monitor`), to query on `port`.
    init(runningAt port: Int) {
        self.port = port
        netns = nil
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Starts and waits until /-/ready answers.
    func start() throws {
        let process = Process()
        let binary = which("prometheus") ?? "/usr/bin/prometheus"
        process.executableURL = URL(fileURLWithPath: netns == nil ? binary : which("ip") ?? "/usr/sbin/ip")
        process.arguments = (netns.map { ["netns", "exec", $0, binary] } ?? []) + [
            "--config.file=\(path("prometheus.yml"))", "--storage.tsdb.path=\(path("data"))", "--web.listen-address=127.0.0.1:\(port)",
            "--log.level=warn",
        ]
        let log = FileHandle(forWritingAtPath: path("prometheus.log")) ?? {
            FileManager.default.createFile(atPath: path("prometheus.log"), contents: nil)
            return FileHandle(forWritingAtPath: path("prometheus.log"))!
        }()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if !process.isRunning { throw CommandFailed(command: "prometheus", status: process.terminationStatus, output: self.log) }
            if (try? get("/-/ready"))?.contains("Ready") == true { return }
            usleep(200_000)
        }
        throw CommandFailed(command: "prometheus (not ready)", status: -1, output: self.log)
    }

    func stop() {
        guard let process, process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    var log: String { (try? String(contentsOfFile: path("prometheus.log"), encoding: .utf8)) ?? "" }

    func get(_ path: String, _ parameters: [String: String] = [:]) throws -> String {
        var arguments = (netns.map { ["ip", "netns", "exec", $0] } ?? []) + ["curl", "-s", "--max-time", "10", "-G", "http://127.0.0.1:\(port)\(path)"]
        for (key, value) in parameters { arguments += ["--data-urlencode", "\(key)=\(value)"] }
        let (status, output) = try command(arguments)
        guard status == 0 else { throw CommandFailed(command: "curl \(path)", status: status, output: output) }
        return output
    }

    /// `data` of an API answer.
    func api(_ path: String, _ parameters: [String: String] = [:]) throws -> Any? {
        let text = try get(path, parameters)
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        guard object?["status"] as? String == "success" else { throw CommandFailed(command: "GET \(path)", status: -1, output: text) }
        return object?["data"]
    }

    /// An instant query's series: (labels, value).
    func query(_ expression: String) throws -> [(labels: [String: String], value: Double)] {
        let result = (try api("/api/v1/query", ["query": expression]) as? [String: Any])?["result"] as? [[String: Any]] ?? []
        return result.map { series in
            let value = (series["value"] as? [Any])?.last as? String
            return (series["metric"] as? [String: String] ?? [:], value.flatMap(Double.init) ?? .nan)
        }
    }

    /// Active targets: their labels and health ("up", "down", "unknown").
    func targets() throws -> [(labels: [String: String], health: String)] {
        let active = (try api("/api/v1/targets") as? [String: Any])?["activeTargets"] as? [[String: Any]] ?? []
        return active.map { ($0["labels"] as? [String: String] ?? [:], $0["health"] as? String ?? "") }
    }

    /// Alerts pending or firing now: (labels, state).
    func alerts() throws -> [(labels: [String: String], state: String)] {
        let alerts = (try api("/api/v1/alerts") as? [String: Any])?["alerts"] as? [[String: Any]] ?? []
        return alerts.map { ($0["labels"] as? [String: String] ?? [:], $0["state"] as? String ?? "") }
    }

    /// Runs contrib/monitoring/dashboards/build.py with grafana-foundation-sdk from .build/pydeps (make test
    /// installs it there).
    static func dashboardBuilder(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try command([
            "/usr/bin/env", "PYTHONPATH=\(repository.appendingPathComponent(".build/pydeps").path)", python3,
            repository.appendingPathComponent("contrib/monitoring/dashboards/build.py").path,
        ] + arguments)
    }

    /// The queries of `dashboards` (by uid; of the panels titled `only` if given, but not those titled
    /// `except`) that return no data, waiting up to `timeout` for all of them to; the dashboards' variables
    /// match everything, `$__rate_interval` is 1m.
    func dashboardQueriesWithoutData(
        _ dashboards: Set<String>, only: Set<String>? = nil, except: Set<String> = [], timeout: TimeInterval = 30
    ) throws -> [String] {
        let (status, text) = try Self.dashboardBuilder(["--queries"])
        guard status == 0 else { throw CommandFailed(command: "build.py --queries", status: status, output: text) }
        let queries = (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [[String: String]] ?? [])
            .filter { query in
                let panel = query["panel"] ?? ""
                return dashboards.contains(query["dashboard"] ?? "") && (only?.contains(panel) ?? true) && !except.contains(panel)
            }
        guard !queries.isEmpty else {
            throw CommandFailed(command: "build.py --queries", status: 0, output: "no query of \(dashboards) (panels \(only.map { "\($0)" } ?? "all"))")
        }
        func instant(_ expression: String) -> String {
            expression.replacingOccurrences(of: "$__rate_interval", with: "1m").replacingOccurrences(of: "$instance", with: ".*")
                .replacingOccurrences(of: "$pipeline", with: ".*")
        }
        var empty: [String] = []
        _ = eventually(timeout: timeout) {
            empty = queries.filter { query in ((try? self.query(instant(query["expr"] ?? ""))) ?? []).isEmpty }
                .map { "\($0["dashboard"] ?? "") / \($0["panel"] ?? ""): \($0["expr"] ?? "")" }
            return empty.isEmpty
        }
        return empty
    }

    /// Checks that every query of `dashboards` (of the panels titled `only` if given, but not of those titled
    /// `except`) answers from a real Prometheus run beside `agent` in its network namespace `netns` (nil: the
    /// test's own), scraping it every second while `traffic` runs for `trafficFor` seconds (once at least).
    /// Does nothing without Prometheus.
    static func expectDashboardsAnswer(
        _ dashboards: Set<String>, scraping agent: WeirProcess, netns: String?, only: Set<String>? = nil, except: Set<String> = [],
        trafficFor: TimeInterval = 0, traffic: () throws -> Void = {}, sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        guard available else { return }
        let prometheus = try PrometheusServer(configuration: """
            global: { scrape_interval: 1s }
            scrape_configs:
              - job_name: weir-agent
                static_configs: [{ targets: ["127.0.0.1:\(agent.metricsPort)"] }]
            """, netns: netns)
        try prometheus.start()
        defer { prometheus.stop() }
        let deadline = Date().addingTimeInterval(trafficFor)
        repeat {
            try traffic()
            if Date() < deadline { usleep(300_000) }
        } while Date() < deadline
        let empty = try prometheus.dashboardQueriesWithoutData(dashboards, only: only, except: except)
        #expect(empty.isEmpty, "queries without data:\n\(empty.joined(separator: "\n"))", sourceLocation: sourceLocation)
    }
}
