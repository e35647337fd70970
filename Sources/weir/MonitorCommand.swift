import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `weir monitor`: a Prometheus for a quick look at a fleet. Writes its configuration — agents discovered
/// through a coordinator (and the coordinator itself), or listed — with Weir's alert rules, then runs
/// Prometheus (Debian's `prometheus` package) in its place.
struct MonitorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "monitor",
        abstract: "Write a Prometheus configuration for Weir (coordinator discovery or static targets, the alert rules) and run Prometheus.",
        discussion: """
            With --coordinator, agents are found through the coordinator's service discovery (GET /api/v1/prometheus/targets) \
            with the API token in --token-file (a viewer token is enough), and the coordinator is scraped too. With --target, \
            the agents' metrics addresses are listed. Everything goes to --directory: prometheus.yml, rules/, data/.
            """)

    @Option(help: "The coordinator's URL (https://host:port): discover its agents, scrape it too.") var coordinator: String?
    @Option(help: "File with an API token for the coordinator (role viewer is enough).") var tokenFile: String?
    @Option(help: "CA certificate (PEM) of the coordinator's certificate; default: the system's.") var ca: String?
    @Option(name: .customLong("target"), help: "An agent's metrics address (host:port); repeat for more.") var targets: [String] = []
    @Option(help: "Folder with the alert rules (*.rules.yml); default: contrib/monitoring/alerts here, or /usr/share/weir/monitoring/alerts.")
    var rules: String?
    @Option(help: "Where the configuration, rules and Prometheus' data go.") var directory: String = "weir-monitor"
    @Option(help: "Prometheus' web address.") var listen: String = "127.0.0.1:9090"
    @Option(help: "How often Prometheus scrapes and evaluates the rules.") var scrapeInterval: String = "15s"
    @Option(help: "The Prometheus binary.") var prometheus: String = "prometheus"
    @Flag(help: "Only write the configuration; do not start Prometheus.") var writeOnly = false

    func validate() throws {
        guard coordinator != nil || !targets.isEmpty else { throw ValidationError("give --coordinator or at least one --target") }
        if coordinator != nil, tokenFile == nil { throw ValidationError("--coordinator needs --token-file (an API token; role viewer is enough)") }
        if let coordinator, !(coordinator.hasPrefix("https://") || coordinator.hasPrefix("http://")) {
            throw ValidationError("--coordinator must be a URL: https://host:port")
        }
        for target in targets where !MonitorConfiguration.isHostPort(target) {
            throw ValidationError("--target \(target): expected host:port (an agent's metrics.listen)")
        }
        guard MonitorConfiguration.isDuration(scrapeInterval) else { throw ValidationError("--scrape-interval \(scrapeInterval): expected e.g. 15s or 1m") }
        guard MonitorConfiguration.isHostPort(listen) else { throw ValidationError("--listen \(listen): expected host:port") }
    }

    func run() throws {
        let files = FileManager.default
        let base = URL(fileURLWithPath: directory)
        let rulesSource = try rulesFolder()
        let rulesTarget = base.appendingPathComponent("rules")
        do {
            try files.createDirectory(at: base.appendingPathComponent("data"), withIntermediateDirectories: true)
            try files.createDirectory(at: rulesTarget, withIntermediateDirectories: true)
            let ruleFiles = try files.contentsOfDirectory(atPath: rulesSource).filter { $0.hasSuffix(".rules.yml") }.sorted()
            guard !ruleFiles.isEmpty else { throw MonitorFailure("no *.rules.yml in \(rulesSource)") }
            for name in ruleFiles {
                let target = rulesTarget.appendingPathComponent(name)
                try? files.removeItem(at: target)
                try files.copyItem(at: URL(fileURLWithPath: rulesSource).appendingPathComponent(name), to: target)
            }
            var tokenCopy: String?
            if let tokenFile {
                // Prometheus reads it from its own folder; the copy is 0600 like the original should be.
                guard let token = files.contents(atPath: tokenFile) else { throw MonitorFailure("cannot read \(tokenFile)") }
                let copy = base.appendingPathComponent("coordinator.token").path
                try? files.removeItem(atPath: copy)
                guard files.createFile(atPath: copy, contents: token, attributes: [.posixPermissions: 0o600]) else {
                    throw MonitorFailure("cannot write \(copy)")
                }
                tokenCopy = copy
            }
            let configuration = MonitorConfiguration(
                coordinator: coordinator, tokenFile: tokenCopy, caFile: ca.map { URL(fileURLWithPath: $0).path }, targets: targets,
                rulesFolder: rulesTarget.path, interval: scrapeInterval)
            try configuration.render().write(to: base.appendingPathComponent("prometheus.yml"), atomically: true, encoding: .utf8)
            print("wrote \(base.appendingPathComponent("prometheus.yml").path) with \(ruleFiles.count) rule files (\(ruleFiles.joined(separator: ", ")))")
        } catch let error as MonitorFailure {
            throw error
        } catch {
            throw MonitorFailure("\(error)")
        }
        // The dashboards sit beside the rules in the repository (and in /usr/share/weir/monitoring when installed).
        let dashboards = URL(fileURLWithPath: rulesSource).deletingLastPathComponent().appendingPathComponent("dashboards/generated").path
        if let names = try? files.contentsOfDirectory(atPath: dashboards).filter({ $0.hasSuffix(".json") }).sorted(), !names.isEmpty {
            print("Grafana dashboards to import (data source: this Prometheus): \(names.map { dashboards + "/" + $0 }.joined(separator: " "))")
        }
        if writeOnly { return }
        print("starting Prometheus at http://\(listen) — targets: /targets, alerts: /alerts")
        let arguments = [
            prometheus, "--config.file=\(base.appendingPathComponent("prometheus.yml").path)",
            "--storage.tsdb.path=\(base.appendingPathComponent("data").path)", "--web.listen-address=\(listen)",
        ]
        // Prometheus takes this process's place: signals and the exit status are its own.
        let argv = arguments.map { strdup($0) } + [nil]
        execvp(prometheus, argv)
        throw MonitorFailure("cannot run \(prometheus): \(String(cString: strerror(errno))) (Debian: apt install prometheus)")
    }

    private func rulesFolder() throws -> String {
        if let rules { return rules }
        for candidate in ["contrib/monitoring/alerts", "/usr/share/weir/monitoring/alerts"]
        where FileManager.default.fileExists(atPath: candidate) {
            return candidate
        }
        throw MonitorFailure("no alert rules found: give --rules (the repository's contrib/monitoring/alerts)")
    }
}

struct MonitorFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// prometheus.yml for `weir monitor`. Strings are written as JSON strings, which YAML reads as they are.
struct MonitorConfiguration {
    let coordinator: String?
    let tokenFile: String?
    let caFile: String?
    let targets: [String]
    let rulesFolder: String
    let interval: String

    func render() -> String {
        var lines = [
            "# Written by `weir monitor`.",
            "global: { scrape_interval: \(interval), evaluation_interval: \(interval) }",
            "rule_files: [\(Self.quoted(rulesFolder + "/*.rules.yml"))]",
            "scrape_configs:",
        ]
        let tls = caFile.map { "{ ca_file: \(Self.quoted($0)) }" }
        if let coordinator, let tokenFile {
            let base = coordinator.hasSuffix("/") ? String(coordinator.dropLast()) : coordinator
            lines += [
                "  - job_name: weir-agent",
                "    http_sd_configs:",
                "      - url: \(Self.quoted(base + "/api/v1/prometheus/targets"))",
                "        refresh_interval: \(interval)",
                // Without the type, Prometheus 2.42 sends the bare token.
                "        authorization: { type: Bearer, credentials_file: \(Self.quoted(tokenFile)) }",
            ]
            if let tls { lines.append("        tls_config: \(tls)") }
            lines += [
                "    relabel_configs:",
                "      - { action: labelmap, regex: __meta_weir_label_(.+) }",
            ]
            let host = URL(string: base).map { url in "\(url.host ?? "localhost"):\(url.port ?? (url.scheme == "https" ? 443 : 80))" } ?? base
            lines += [
                "  - job_name: weir-coordinator",
                "    scheme: \(base.hasPrefix("https://") ? "https" : "http")",
            ]
            if let tls { lines.append("    tls_config: \(tls)") }
            lines.append("    static_configs: [{ targets: [\(Self.quoted(host))] }]")
        }
        if !targets.isEmpty {
            lines += [
                "  - job_name: weir-agent-static",
                "    static_configs: [{ targets: [\(targets.map(Self.quoted).joined(separator: ", "))] }]",
                "    relabel_configs:",
                // The rules select job="weir-agent": listed agents count as agents too.
                "      - { target_label: job, replacement: weir-agent }",
            ]
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func quoted(_ text: String) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        let data = (try? encoder.encode(text)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func isHostPort(_ text: String) -> Bool {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return false }
        let host = text[..<colon]
        return !host.isEmpty && host.allSatisfy { $0.isLetter || $0.isNumber || ".-:[]_".contains($0) }
    }

    static func isDuration(_ text: String) -> Bool {
        text.range(of: #"^[0-9]+(ms|s|m|h)$"#, options: .regularExpression) != nil
    }
}
