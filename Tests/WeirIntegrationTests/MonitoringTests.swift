import Foundation
import Testing

/// The monitoring bundle (contrib/monitoring): the alert rules checked and unit-tested with promtool, and a
/// real Prometheus that finds the agents through the coordinator's service discovery and evaluates the rules
/// on what real agents export.
@Suite("Monitoring: alert rules and Prometheus service discovery", .serialized)
struct MonitoringTests {
    @Test("The alert rules pass promtool check and their promtool unit tests; each alert fires and resolves; every metric they use is one Weir exports")
    func alertRules() throws {
        let root = PrometheusServer.repository
        let (status, output) = try command([
            which("python3") ?? "/usr/bin/python3", root.appendingPathComponent("contrib/monitoring/alerts/run_tests.py").path,
            "--sources", root.appendingPathComponent("Sources").path, root.appendingPathComponent("plugins").path,
        ])
        #expect(status == 0, "\(output)")
        #expect(output.contains("each fires and resolves"), "\(output)")
    }

    @Test("""
        Prometheus follows the fleet through the coordinator's http_sd endpoint (an agent on 0.0.0.0 scraped at the address it \
        connected from, agent labels for relabelling), scrapes the coordinator, keeps an offline agent as down, drops a revoked one; \
        a failed reload on a real agent fires WeirReloadFailed
        """)
    func serviceDiscovery() throws {
        try #require(PrometheusServer.available, "Debian's prometheus package is not installed")
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki, heartbeat: "300ms", offlineAfter: "1s")
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken()
        let edge = try CoordinatorTests.managedAgent("edge-1", coordinator: coordinator, token: token, labels: ["role": "edge", "site": "north"])
        let exit = try CoordinatorTests.managedAgent("exit-1", coordinator: coordinator, token: token, labels: ["role": "exit"], metricsHost: "0.0.0.0")
        defer { edge.stop(); exit.stop() }
        #expect(eventually(timeout: 10) { CoordinatorTests.inSync(coordinator, "edge-1") && CoordinatorTests.inSync(coordinator, "exit-1") })

        // The discovery document, read with a viewer token (what Prometheus is given); no token, no document.
        let created = try coordinator.admin("POST", "/api/v1/tokens", json: ["name": "prometheus", "role": "viewer"]) as? [String: Any]
        let viewer = try #require(created?["token"] as? String)
        #expect(try coordinator.request("GET", "/api/v1/prometheus/targets", token: nil).0 == 401)
        let (status, body) = try coordinator.request("GET", "/api/v1/prometheus/targets", token: viewer)
        #expect(status == 200, "\(body)")
        let groups = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [[String: Any]] ?? []
        let byAgent = Dictionary(groups.map { (($0["labels"] as? [String: String])?["agent"] ?? "?", $0) }, uniquingKeysWith: { $1 })
        #expect(byAgent["edge-1"]?["targets"] as? [String] == ["127.0.0.1:\(edge.metricsPort)"], "\(body)")
        #expect(byAgent["exit-1"]?["targets"] as? [String] == ["127.0.0.1:\(exit.metricsPort)"], "0.0.0.0 is replaced by the agent's address: \(body)")
        let edgeLabels = byAgent["edge-1"]?["labels"] as? [String: String] ?? [:]
        #expect(edgeLabels["__meta_weir_label_role"] == "edge" && edgeLabels["__meta_weir_label_site"] == "north" && edgeLabels["__meta_weir_online"] == "true")

        let rules = PrometheusServer.repository.appendingPathComponent("contrib/monitoring/alerts").path
        let prometheus = try PrometheusServer(
            configuration: """
                global: { scrape_interval: 1s, evaluation_interval: 1s }
                rule_files: ["\(rules)/*.rules.yml"]
                scrape_configs:
                  - job_name: weir-agent
                    http_sd_configs:
                      - url: \(coordinator.url)/api/v1/prometheus/targets
                        refresh_interval: 1s
                        authorization: { type: Bearer, credentials_file: viewer.token }  # Prometheus 2.42 leaves out "Bearer" without type
                        tls_config: { ca_file: \(pki.caPath) }
                    relabel_configs:
                      - { action: labelmap, regex: __meta_weir_label_(.+) }
                  - job_name: weir-coordinator
                    scheme: https
                    tls_config: { ca_file: \(pki.caPath) }
                    static_configs: [{ targets: ["127.0.0.1:\(coordinator.port)"] }]
                """,
            files: ["viewer.token": viewer])
        try prometheus.start()
        defer { prometheus.stop() }

        let scraped = eventually(timeout: 30) {
            let up = (try? prometheus.query(#"up{job="weir-agent"} == 1"#)) ?? []
            return Set(up.compactMap { $0.labels["agent"] }) == ["edge-1", "exit-1"] && up.contains { $0.labels["role"] == "edge" && $0.labels["site"] == "north" }
        }
        #expect(scraped, "targets: \(String(describing: try? prometheus.targets()))\n\(prometheus.log)")
        #expect(eventually(timeout: 15) {
            (try? prometheus.query(#"weir_coordinator_agent_bundles{job="weir-coordinator",state="current"}"#))?.first?.value == 2
        }, "\(String(describing: try? prometheus.query("weir_coordinator_agent_bundles")))")

        // A reload that fails on edge-1: the alert fires (it has no `for`), for that agent only.
        try edge.writePipelines("pipelines:\n  broken:\n    stages: []\n")
        try edge.reload()
        let fired = eventually(timeout: 20) {
            ((try? prometheus.alerts()) ?? []).contains { $0.labels["alertname"] == "WeirReloadFailed" && $0.labels["agent"] == "edge-1" && $0.state == "firing" }
        }
        #expect(fired, "alerts: \(String(describing: try? prometheus.alerts()))")
        #expect(!((try? prometheus.alerts()) ?? []).contains { $0.labels["alertname"] == "WeirReloadFailed" && $0.labels["agent"] == "exit-1" })

        // exit-1 stops: still discovered (offline), scraped as down. Revoked: gone from discovery.
        exit.stop()
        #expect(eventually(timeout: 20) {
            ((try? prometheus.query(#"up{job="weir-agent",agent="exit-1"}"#)) ?? []).first?.value == 0
        })
        #expect(eventually(timeout: 10) {
            let text = (try? coordinator.request("GET", "/api/v1/prometheus/targets", token: viewer).1) ?? ""
            return text.contains("\"__meta_weir_online\" : \"false\"")
        })
        try coordinator.admin("POST", "/api/v1/agents/exit-1/revoke")
        #expect(eventually(timeout: 10) {
            !((try? coordinator.request("GET", "/api/v1/prometheus/targets", token: viewer).1) ?? "exit-1").contains("exit-1")
        })
        #expect(eventually(timeout: 15) {
            !((try? prometheus.targets()) ?? []).contains { $0.labels["agent"] == "exit-1" }
        })
    }

    @Test("weir monitor writes a configuration promtool accepts (coordinator discovery, a listed agent, the alert rules) and runs a Prometheus that scrapes both agents and the coordinator with the rules loaded; bad arguments are refused with a reason")
    func monitorCommand() throws {
        try #require(PrometheusServer.available, "Debian's prometheus package is not installed")
        let refused = try runWeir(["monitor", "--write-only"])
        #expect(refused.status != 0 && refused.output.contains("give --coordinator or at least one --target"), "\(refused.output)")
        let noToken = try runWeir(["monitor", "--coordinator", "https://127.0.0.1:1", "--write-only"])
        #expect(noToken.status != 0 && noToken.output.contains("--token-file"), "\(noToken.output)")

        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki, heartbeat: "300ms")
        try coordinator.start()
        defer { coordinator.stop() }
        let managed = try CoordinatorTests.managedAgent("mon-1", coordinator: coordinator, token: try coordinator.enrollmentToken(), labels: ["role": "edge"])
        defer { managed.stop() }
        let standalone = try WeirProcess(pipelines: "pipelines: {}", id: "standalone")
        try standalone.start()
        defer { standalone.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("mon-1"))??["metrics_address"] as? String == "127.0.0.1:\(managed.metricsPort)" })

        let created = try coordinator.admin("POST", "/api/v1/tokens", json: ["name": "monitor", "role": "viewer"]) as? [String: Any]
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-monitor-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let tokenFile = directory.appendingPathComponent("viewer.token").path
        try #require(created?["token"] as? String).write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let port = freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: WeirProcess.binary)
        process.arguments = [
            "monitor", "--coordinator", coordinator.url, "--token-file", tokenFile, "--ca", pki.caPath,
            "--target", "127.0.0.1:\(standalone.metricsPort)", "--rules", PrometheusServer.repository.appendingPathComponent("contrib/monitoring/alerts").path,
            "--directory", directory.appendingPathComponent("monitor").path, "--listen", "127.0.0.1:\(port)", "--scrape-interval", "1s",
        ]
        let output = directory.appendingPathComponent("output.log")
        FileManager.default.createFile(atPath: output.path, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: output)
        process.standardError = try FileHandle(forWritingTo: output)
        try process.run()
        defer { process.stopHelper() }
        let log = { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }

        let configuration = directory.appendingPathComponent("monitor/prometheus.yml").path
        #expect(eventually(timeout: 10) { FileManager.default.fileExists(atPath: configuration) }, "\(log())")
        let check = try command([which("promtool") ?? "/usr/bin/promtool", "check", "config", configuration])
        #expect(check.status == 0, "\(check.output)")
        let copiedToken = try FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent("monitor/coordinator.token").path)
        #expect((copiedToken[.posixPermissions] as? Int) == 0o600)

        let prometheus = PrometheusServer(runningAt: port)
        let scraped = eventually(timeout: 40) {
            let up = (try? prometheus.query(#"up{job="weir-agent"} == 1"#)) ?? []
            return up.count == 2 && up.contains { $0.labels["agent"] == "mon-1" && $0.labels["role"] == "edge" }
                && up.contains { $0.labels["instance"] == "127.0.0.1:\(standalone.metricsPort)" }
        }
        #expect(scraped, "\(log())\n\(String(describing: try? prometheus.targets()))")
        #expect(eventually(timeout: 10) { ((try? prometheus.query(#"up{job="weir-coordinator"}"#)) ?? []).first?.value == 1 })
        let groups = (try prometheus.api("/api/v1/rules") as? [String: Any])?["groups"] as? [[String: Any]] ?? []
        #expect(Set(groups.compactMap { $0["name"] as? String }) == ["weir-agent", "weir-pipelines", "weir-kernel", "weir-services", "weir-coordinator"])
    }

    @Test("The committed dashboards are what their pieces build (grafana-foundation-sdk), and every metric their queries use is one Weir exports")
    func dashboardsUpToDate() throws {
        let root = PrometheusServer.repository
        let (status, output) = try PrometheusServer.dashboardBuilder([
            "--check", "--sources", root.appendingPathComponent("Sources").path, root.appendingPathComponent("plugins").path,
        ])
        #expect(status == 0, "\(output)")
        #expect(output.contains("generated/ is up to date"), "\(output)")
    }

    @Test("""
        Every query of the fleet, agent and pipelines dashboards returns data from a real Prometheus scraping a coordinator, \
        a managed SOCKS5 agent, a relay entry and exit, and a reverse tunnel's public and inner agents, all carrying traffic
        """)
    func dashboardQueriesReturnData() throws {
        try #require(PrometheusServer.available, "Debian's prometheus package is not installed")
        let pki = try TestPKI()
        try pki.issue("exit", dnsNames: ["exit.weir.test"])
        try pki.issue("inner", dnsNames: ["inner.weir.test"])
        let coordinator = try CoordinatorProcess(pki: pki, heartbeat: "300ms")
        try coordinator.start()
        defer { coordinator.stop() }
        let socksPort = freePort()
        let managed = try CoordinatorTests.managedAgent(
            "proxy-1", coordinator: coordinator, token: try coordinator.enrollmentToken(), labels: ["role": "proxy"],
            pipelines: """
                pipelines:
                  proxy:
                    stages:
                      - type: listen.socks5
                        address: 127.0.0.1:\(socksPort)
                      - type: connect.tcp
                        connect_timeout: 2s
                """)
        defer { managed.stop() }
        let echo = try Backends.echo()
        let exitPort = freePort(), entryPort = freePort(), publicPort = freePort(), tunnelPort = freePort()
        let exit = try RelayTests.exitAgent(port: exitPort, pki: pki)
        try exit.start()
        defer { exit.stop() }
        let entry = try RelayTests.entryAgent(port: entryPort, exits: [exitPort], service: echo.port, pki: pki)
        try entry.start()
        defer { entry.stop() }
        let publicSide = try ReverseTunnelTests.publicAgent(port: publicPort, tunnelPort: tunnelPort, pki: pki)
        try publicSide.start()
        defer { publicSide.stop() }
        let inner = try ReverseTunnelTests.innerAgent(tunnelPort: tunnelPort, service: echo.port, pki: pki)
        try inner.start()
        defer { inner.stop() }
        #expect(eventually(timeout: 10) { CoordinatorTests.inSync(coordinator, "proxy-1") })

        let created = try coordinator.admin("POST", "/api/v1/tokens", json: ["name": "prometheus", "role": "viewer"]) as? [String: Any]
        let statics = [exit, entry, publicSide, inner].map { "\"127.0.0.1:\($0.metricsPort)\"" }.joined(separator: ", ")
        let prometheus = try PrometheusServer(
            configuration: """
                global: { scrape_interval: 1s, evaluation_interval: 1s }
                scrape_configs:
                  - job_name: weir-agent
                    http_sd_configs:
                      - url: \(coordinator.url)/api/v1/prometheus/targets
                        refresh_interval: 1s
                        authorization: { type: Bearer, credentials_file: viewer.token }
                        tls_config: { ca_file: \(pki.caPath) }
                    static_configs: [{ targets: [\(statics)] }]
                  - job_name: weir-coordinator
                    scheme: https
                    tls_config: { ca_file: \(pki.caPath) }
                    static_configs: [{ targets: ["127.0.0.1:\(coordinator.port)"] }]
                """,
            files: ["viewer.token": try #require(created?["token"] as? String)])
        try prometheus.start()
        defer { prometheus.stop() }

        // Traffic for a few scrapes: through the SOCKS5 proxy (and one refused destination, for the errors panel), the relay, the tunnel.
        let client = #"""
            import socket, struct, sys
            proxy, echo, closed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
            def through(port):
                s = socket.create_connection(("127.0.0.1", proxy), timeout=5)
                s.sendall(b"\x05\x01\x00"); s.recv(2)
                s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", port))
                reply = s.recv(10)
                if reply[1] == 0:
                    s.sendall(b"x" * 5000)
                    got = 0
                    while got < 5000:
                        got += len(s.recv(65536))
                s.close()
            through(echo)
            through(closed)
            """#
        let deadline = Date().addingTimeInterval(8)
        while Date() < deadline {
            _ = try command([python3, "-c", client, "\(socksPort)", "\(echo.port)", "\(freePort())"])
            _ = try echoMismatch(port: entryPort, size: 20_000, seed: 1, timeout: 5)
            _ = try echoMismatch(port: publicPort, size: 20_000, seed: 2, timeout: 5)
            usleep(200_000)
        }
        // A reload, for the reload panels.
        try managed.signal(SIGHUP)
        #expect(eventually(timeout: 20) { ((try? prometheus.query(#"up{job="weir-agent"} == 1"#)) ?? []).count == 5 })

        let empty = try prometheus.dashboardQueriesWithoutData(["weir-fleet", "weir-agent", "weir-pipelines"])
        #expect(empty.isEmpty, "queries without data:\n\(empty.joined(separator: "\n"))")
    }

    @Test("log.format json: every line is one JSON object; a failed connect names pipeline, stage, reason, client and destination, as the README's queries expect")
    func structuredLogs() throws {
        let port = freePort(), closed = freePort()
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  proxy:
                    stages:
                      - type: listen.socks5
                        address: 127.0.0.1:\(port)
                      - type: connect.tcp
                        connect_timeout: 2s
                """, logFormat: "json")
        try agent.start()
        defer { agent.stop() }
        let (status, output) = try command([which("curl")!, "-s", "--max-time", "5", "--socks5", "127.0.0.1:\(port)", "http://127.0.0.1:\(closed)/"])
        #expect(status != 0, "\(output)")
        var failure: [String: String]?
        #expect(eventually(timeout: 5) {
            failure = agent.log.split(separator: "\n").compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: String]
            }.first { $0["message"] == "connect failed" }
            return failure != nil
        }, "\(agent.log)")
        #expect(failure?["level"] == "warning")
        #expect(failure?["pipeline"] == "proxy" && failure?["stage"] == "connect.tcp" && failure?["reason"] == "connect_failed", "\(failure ?? [:])")
        #expect(failure?["client"]?.hasPrefix("127.0.0.1:") == true && failure?["destination"] == "127.0.0.1:\(closed)", "\(failure ?? [:])")
        #expect(failure?["time"] != nil && failure?["error"]?.isEmpty == false)
        let lines = agent.log.split(separator: "\n")
        #expect(!lines.isEmpty && lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) is [String: Any] }, "\(agent.log)")
    }
}
