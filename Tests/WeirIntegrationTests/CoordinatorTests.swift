import Foundation
import Testing

/// `weir coordinator` with real agents: enrollment over wss, bundles pushed on change, ACK/NACK, agents that
/// keep running without it, authentication. SQLite here; PostgreSQL in CoordinatorPostgresTests. All on loopback.
@Suite(
    "Coordinator (SQLite) with real agents", .serialized,
    .enabled(if: which("openssl") != nil && which("curl") != nil, "needs openssl and curl installed"))
struct CoordinatorTests {
    static func forward(_ id: String, port: Int, to target: Int) -> String {
        """
        pipelines:
          \(id):
            stages:
              - type: listen.tcp
                address: 127.0.0.1:\(port)
              - type: connect.tcp
                addresses: [127.0.0.1:\(target)]

        """
    }

    static func managedAgent(
        _ id: String, coordinator: CoordinatorProcess, token: String, labels: [String: String], pipelines: String = "pipelines: {}",
        metricsHost: String = "127.0.0.1"
    ) throws -> WeirProcess {
        let agent = try WeirProcess(
            pipelines: pipelines, extra: try coordinator.agentSection(token: token, labels: labels, agent: id), id: id, metricsHost: metricsHost)
        try agent.start()
        return agent
    }

    /// 4 KiB echoed byte-exact through the port.
    static func echoes(_ port: Int) -> Bool {
        do { return try echoMismatch(port: port, size: 4096, seed: UInt64(port), timeout: 5) == nil } catch { return false }
    }

    /// Applied version equals the desired one.
    static func inSync(_ coordinator: CoordinatorProcess, _ id: String) -> Bool {
        (try? coordinator.agent(id))??["status"] as? String == "in_sync"
    }

    @Test("enroll two agents, assign to a label group: both ACK within 2 s; invalid documents refused; a NACK for one agent only")
    func distribution() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken(labels: ["fleet": "test"], uses: 2)
        let echo = try Backends.echo()
        let localPort = freePort()
        let a = try Self.managedAgent("agent-a", coordinator: coordinator, token: token, labels: ["role": "edge"],
                                      pipelines: Self.forward("local-one", port: localPort, to: echo.port))
        let b = try Self.managedAgent("agent-b", coordinator: coordinator, token: token, labels: ["role": "edge", "site": "b"])
        defer { a.stop(); b.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("agent-a"))??["online"] as? Bool == true && (try? coordinator.agent("agent-b"))??["online"] as? Bool == true })
        let agentA = try #require(try coordinator.agent("agent-a"))
        #expect(agentA["labels"] as? [String: String] == ["fleet": "test", "role": "edge"])
        #expect((agentA["facts"] as? [String: String])?["kernel"]?.isEmpty == false)
        // The token allowed two enrollments; a third agent is refused.
        let (thirdStatus, thirdBody) = try coordinator.request("GET", "/api/v1/agent/connect", token: nil, extraHeaders: ["X-Weir-Agent-Id: agent-c", "X-Weir-Enrollment-Token: \(token)"])
        #expect(thirdStatus == 401, "\(thirdBody)")

        // A document for the group: both agents run it, and say so, within 2 s.
        try coordinator.admin("PUT", "/api/v1/pipelines/group-echo", yaml: Self.forward("group-echo", port: 0, to: echo.port))
        let assigned = Date()
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "group-echo", "selector": "role=edge"])
        #expect(eventually(timeout: 2) { Self.inSync(coordinator, "agent-a") && Self.inSync(coordinator, "agent-b") },
                "\(String(describing: try? coordinator.agent("agent-a")))\n\(String(describing: try? coordinator.agent("agent-b")))")
        let converged = Date().timeIntervalSince(assigned)
        print("group assignment: both agents ACKed after \(String(format: "%.3f", converged)) s")
        for agent in [a, b] {
            #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "group-echo"]) != nil, "\(agent.log)")
        }

        // One agent's own forward, assigned by id, carries traffic.
        let portA = freePort()
        try coordinator.admin("PUT", "/api/v1/pipelines/a-forward", yaml: Self.forward("a-forward", port: portA, to: echo.port))
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "a-forward", "agent": "agent-a"])
        #expect(eventually(timeout: 5) { Self.echoes(portA) })
        #expect(eventually(timeout: 5) { Self.inSync(coordinator, "agent-a") })
        // Heartbeats carry the pipeline's traffic.
        #expect(eventually(timeout: 5) {
            let traffic = (try? coordinator.admin("GET", "/api/v1/agents/agent-a/traffic")) as? [String: [String: Any]]
            return (traffic?["a-forward"]?["bytes_in"] as? Double ?? 0) >= 4096
        })

        // An invalid document is refused with the validator's own messages, and nothing changes.
        let invalid = "pipelines:\n  broken:\n    stages:\n      - type: listen.tcp\n        adress: 127.0.0.1:1\n"
        let (invalidStatus, invalidBody) = try coordinator.request(
            "PUT", "/api/v1/pipelines/broken", body: invalid, contentType: "application/yaml", token: coordinator.adminToken)
        #expect(invalidStatus == 422)
        #expect(invalidBody.contains("pipelines/broken.yaml:5:9: pipelines.broken.stages[0] (listen.tcp): adress: unknown key"), "\(invalidBody)")
        let (missing, _) = try coordinator.request("GET", "/api/v1/pipelines/broken", token: coordinator.adminToken)
        #expect(missing == 404)

        // An alias bomb (a few hundred bytes standing for billions of values) is refused at once, and the
        // coordinator stays small and keeps serving.
        var bomb = ["pipelines:", "  bomb:", "    stages: *a9", "x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        bomb = Array(bomb[3...]) + (1...9).map { "x\($0): &a\($0) [" + Array(repeating: "*a\($0 - 1)", count: 9).joined(separator: ", ") + "]" } + Array(bomb[..<3])
        let bombStarted = Date()
        let (bombStatus, bombBody) = try coordinator.request(
            "PUT", "/api/v1/pipelines/bomb", body: bomb.joined(separator: "\n") + "\n", contentType: "application/yaml", token: coordinator.adminToken)
        #expect(bombStatus == 422 && bombBody.contains("once its aliases are expanded"), "\(bombStatus) \(bombBody)")
        #expect(Date().timeIntervalSince(bombStarted) < 2)
        #expect((residentKiB(pid: coordinator.pid) ?? 0) < 500_000)

        // A document that cannot run on agent-b (its port is taken there): NACK with the error, for agent-b only.
        let taken = try TCPListener()
        try coordinator.admin("PUT", "/api/v1/pipelines/b-only", yaml: Self.forward("b-only", port: taken.port, to: echo.port))
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "b-only", "agent": "agent-b"])
        #expect(eventually(timeout: 5) { (try? coordinator.agent("agent-b"))??["status"] as? String == "refused" })
        let agentB = try #require(try coordinator.agent("agent-b"))
        let error = agentB["last_error"] as? String ?? ""
        #expect(error == "pipeline \"b-only\" failed to start: cannot listen on 127.0.0.1:\(taken.port) (listen.tcp): Address already in use", "\(error)")
        #expect(Self.inSync(coordinator, "agent-a"))
        // agent-b keeps running what it had; the refused version is not sent again.
        #expect(try b.metric("weir_pipeline_connections_total", ["pipeline": "group-echo"]) != nil)
        usleep(1_500_000)
        let refusedVersion = agentB["nacked_version"] as? String ?? "?"
        #expect(b.log.components(separatedBy: "applying coordinator bundle").filter { $0.contains(refusedVersion) }.count == 1, "\(b.log)")

        // A pipeline id that agent-a already has locally: refused as a duplicate, reported as a NACK.
        try coordinator.admin("PUT", "/api/v1/pipelines/collide", yaml: Self.forward("local-one", port: 0, to: echo.port))
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "collide", "agent": "agent-a"])
        #expect(eventually(timeout: 5) { (try? coordinator.agent("agent-a"))??["status"] as? String == "refused" })
        #expect(((try coordinator.agent("agent-a"))?["last_error"] as? String)?.contains("duplicate pipeline id \"local-one\"") == true)
        #expect(Self.echoes(portA) && Self.echoes(localPort))

        // Both online agents refused the bundle meant for them (the WeirBundleRefused alert's series).
        #expect(eventually(timeout: 5) {
            let text = (try? coordinator.request("GET", "/metrics", token: nil).1) ?? ""
            return value(in: text, "weir_coordinator_agent_bundles", ["state": "refused"]) == 2
                && value(in: text, "weir_coordinator_agent_bundles", ["state": "current"]) == 0
                && value(in: text, "weir_coordinator_agent_bundles", ["state": "pending"]) == 0
        })
        let metrics = try coordinator.request("GET", "/metrics", token: nil).1
        #expect((value(in: metrics, "weir_coordinator_acks_total", [:]) ?? 0) >= 3)
        #expect((value(in: metrics, "weir_coordinator_nacks_total", [:]) ?? 0) >= 2)
        #expect(value(in: metrics, "weir_coordinator_connected_agents", [:]) == 2)
        #expect((value(in: metrics, "weir_coordinator_push_latency_seconds_count", [:]) ?? 0) >= 3)
    }

    @Test("agents keep forwarding while the coordinator is down, restart from their last bundle, and converge when it returns")
    func coordinatorDown() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken(labels: ["role": "edge"])
        let echo = try Backends.echo()
        let a = try Self.managedAgent("agent-a", coordinator: coordinator, token: token, labels: [:])
        let b = try Self.managedAgent("agent-b", coordinator: coordinator, token: token, labels: [:])
        defer { a.stop(); b.stop() }
        let portA = freePort(), portB = freePort()
        try coordinator.admin("PUT", "/api/v1/pipelines/fa", yaml: Self.forward("fa", port: portA, to: echo.port))
        try coordinator.admin("PUT", "/api/v1/pipelines/fb", yaml: Self.forward("fb", port: portB, to: echo.port))
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "fa", "agent": "agent-a"])
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "fb", "agent": "agent-b"])
        #expect(eventually(timeout: 5) { Self.echoes(portA) && Self.echoes(portB) })

        coordinator.stop()
        #expect(Self.echoes(portA) && Self.echoes(portB))
        // Restarted while the coordinator is away: it runs its last bundle from state_dir.
        a.stop()
        try a.start()
        #expect(Self.echoes(portA), "\(a.log)")
        // The first connection attempt runs after "agent started": its failure is logged a moment later.
        #expect(eventually(timeout: 5) { a.log.contains("coordinator connection failed") }, "\(a.log)")

        try coordinator.start()
        #expect(eventually(timeout: 10) { (try? coordinator.agent("agent-a"))??["online"] as? Bool == true }, "\(a.log)")
        let portA2 = freePort(), portB2 = freePort()
        try coordinator.admin("PUT", "/api/v1/pipelines/fa", yaml: Self.forward("fa", port: portA2, to: echo.port))
        try coordinator.admin("PUT", "/api/v1/pipelines/fb", yaml: Self.forward("fb", port: portB, to: echo.port) + Self.forward("fb2", port: portB2, to: echo.port).replacingOccurrences(of: "pipelines:\n", with: ""))
        #expect(eventually(timeout: 10) { Self.inSync(coordinator, "agent-a") && Self.inSync(coordinator, "agent-b") },
                "\(coordinator.log)")
        #expect(Self.echoes(portA2))
        #expect(eventually(timeout: 5) { !Self.echoes(portA) })
        #expect(Self.echoes(portB2) && Self.echoes(portB))
    }

    @Test("API tokens: 401 without or with an unknown token, viewers read but cannot write; revoked agent credentials are refused")
    func authentication() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        for token in [nil, "weir_api_not-a-token"] {
            let (status, body) = try coordinator.request("GET", "/api/v1/agents", token: token)
            #expect(status == 401, "\(body)")
            let (writeStatus, _) = try coordinator.request("PUT", "/api/v1/pipelines/x", body: "pipelines: {}", token: token)
            #expect(writeStatus == 401)
        }
        let viewer = try #require((coordinator.admin("POST", "/api/v1/tokens", json: ["name": "grafana", "role": "viewer"]) as? [String: Any])?["token"] as? String)
        #expect(try coordinator.request("GET", "/api/v1/agents", token: viewer).0 == 200)
        #expect(try coordinator.request("GET", "/api/v1/pipelines", token: viewer).0 == 200)
        #expect(try coordinator.request("PUT", "/api/v1/pipelines/x", body: "pipelines: {}", contentType: "application/yaml", token: viewer).0 == 403)
        #expect(try coordinator.request("POST", "/api/v1/enrollment-tokens", body: "{}", token: viewer).0 == 403)
        #expect(try coordinator.request("POST", "/api/v1/tokens", body: #"{"name":"x","role":"admin"}"#, token: viewer).0 == 403)

        let token = try coordinator.enrollmentToken()
        let agent = try Self.managedAgent("agent-r", coordinator: coordinator, token: token, labels: [:])
        defer { agent.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("agent-r"))??["online"] as? Bool == true })
        let credentialFile = agent.directory.appendingPathComponent("coordinator/credential")
        let credential = try String(contentsOf: credentialFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let connect = { (credential: String) in
            try coordinator.request("GET", "/api/v1/agent/connect", token: nil, extraHeaders: ["X-Weir-Agent-Id: agent-r", "Authorization: Bearer \(credential)"]).0
        }
        #expect(try connect(credential) == 426)
        #expect(try connect("weir_agent_forged") == 401)
        // Another agent's token cannot claim an enrolled id.
        let (claim, _) = try coordinator.request("GET", "/api/v1/agent/connect", token: nil, extraHeaders: ["X-Weir-Agent-Id: agent-r", "X-Weir-Enrollment-Token: \(token)"])
        #expect(claim == 409)

        #expect(try agent.metric("weir_coordinator_connected") == 1)
        #expect(try agent.health().0 == 200)

        try coordinator.admin("POST", "/api/v1/agents/agent-r/revoke")
        #expect(try connect(credential) == 401)
        // Offline at once (the heartbeat is recent; offline_after has not passed).
        #expect((try coordinator.agent("agent-r"))?["online"] as? Bool == false)
        // The agent's own upgrade gets 401 with the reason, which it logs, reports in /healthz and its metrics.
        let (upgradeStatus, upgradeBody) = try coordinator.request(
            "GET", "/api/v1/agent/connect", token: nil, extraHeaders: [
                "X-Weir-Agent-Id: agent-r", "Authorization: Bearer \(credential)", "Connection: Upgrade", "Upgrade: websocket",
                "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ])
        #expect(upgradeStatus == 401 && upgradeBody.contains("agent \\\"agent-r\\\" was revoked"), "\(upgradeStatus) \(upgradeBody)")
        #expect(eventually(timeout: 10) { agent.log.contains("the coordinator refused this agent") && agent.log.contains("was revoked") }, "\(agent.log)")
        #expect(try agent.metric("weir_coordinator_refused") == 1)
        #expect(try agent.metric("weir_coordinator_connected") == 0)
        let (health, report) = try agent.health()
        #expect(health == 503 && report.contains("coordinator: refused (HTTP 401): agent \"agent-r\" was revoked"), "\(report)")
        // Once per backoff step, not a flood: 0.5 s doubling, so a handful in 6 s.
        Thread.sleep(forTimeInterval: 6)
        let refusals = agent.log.components(separatedBy: "the coordinator refused this agent").count - 1
        #expect((2...6).contains(refusals), "\(refusals) refusals logged")
        #expect((try coordinator.agent("agent-r"))?["online"] as? Bool == false)

        // Someone else's credential is refused with its own reason.
        let (forged, forgedBody) = try coordinator.request(
            "GET", "/api/v1/agent/connect", token: nil, extraHeaders: [
                "X-Weir-Agent-Id: agent-r", "Authorization: Bearer weir_agent_forged", "Connection: Upgrade", "Upgrade: websocket",
                "Sec-WebSocket-Version: 13", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            ])
        #expect(forged == 401 && forgedBody.contains("not the credential of agent"), "\(forged) \(forgedBody)")
    }

    @Test("weir ctl vpn: a server, a plan, a user and a device; the configuration and QR code written 0600; errors exit 1")
    func ctlVPN() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let tokenFile = coordinator.directory.appendingPathComponent("state/admin.token").path
        let ctl = { (arguments: [String]) throws -> (status: Int32, output: String) in
            try runWeir(["ctl", "vpn"] + arguments.prefix(1) + ["--url", coordinator.url, "--ca", pki.caPath, "--token-file", tokenFile] + arguments.dropFirst())
        }
        let server = try ctl(["servers", "put", "office", "--agent", "gw1", "--endpoint", "vpn.example.com:51820", "--address", "10.8.0.1/24", "--address", "fd08::1/64",
                              "--pool", "10.8.0.0/24", "--pool", "fd08::/64", "--dns", "10.8.0.1", "--masquerade", "eth0"])
        #expect(server.status == 0 && server.output.contains("\"public_key\"") && !server.output.contains("private_key"), "\(server.output)")
        #expect(try ctl(["plans", "put", "basic", "--rate", "20mbit", "--quota", "50GiB"]).status == 0)
        #expect(try ctl(["users", "put", "alice@example.com", "--plan", "basic", "--profile", "internet_only"]).status == 0)
        let device = try ctl(["devices", "add", "alice@example.com", "phone", "--server", "office"])
        #expect(device.status == 0 && device.output.contains("\"10.8.0.2\"") && device.output.contains("\"fd08::2\""), "\(device.output)")
        let file = coordinator.directory.appendingPathComponent("phone.conf").path
        #expect(try ctl(["devices", "config", "alice@example.com", "phone", "-o", file]).status == 0)
        let text = try String(contentsOfFile: file, encoding: .utf8)
        #expect(text.contains("Address = 10.8.0.2/32, fd08::2/128") && text.contains("PrivateKey = "))
        #expect((try FileManager.default.attributesOfItem(atPath: file)[.posixPermissions] as? Int) == 0o600)
        let png = coordinator.directory.appendingPathComponent("phone.png").path
        #expect(try ctl(["devices", "qr", "alice@example.com", "phone", "-o", png]).status == 0)
        #expect(Array(try Data(contentsOf: URL(fileURLWithPath: png)).prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        // The server's document as agents get it: the user's profile and plan are in it.
        #expect(try ctl(["users", "show", "alice@example.com"]).output.contains("\"peer\" : \"alice@example.com.phone\""))
        let refused = try ctl(["plans", "delete", "basic"])
        #expect(refused.status == 1 && refused.output.contains("assigned to alice@example.com"), "\(refused.output)")
        #expect(try ctl(["users", "put", "bob", "--profile", "everything"]).status == 1)
    }

    @Test("weir ctl: documents, assignments, tokens and agents through the API; errors exit 1 with the status")
    func ctl() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let tokenFile = coordinator.directory.appendingPathComponent("state/admin.token").path
        let ctl = { (arguments: [String]) throws -> (status: Int32, output: String) in
            try runWeir(["ctl"] + arguments.prefix(1) + ["--url", coordinator.url, "--ca", pki.caPath, "--token-file", tokenFile] + arguments.dropFirst())
        }
        let document = coordinator.directory.appendingPathComponent("doc.yaml").path
        try Self.forward("from-ctl", port: freePort(), to: 9).write(toFile: document, atomically: true, encoding: .utf8)
        let applied = try ctl(["pipelines", "apply", "from-ctl", document])
        #expect(applied.status == 0 && applied.output.contains("\"name\" : \"from-ctl\""), "\(applied.output)")
        let assigned = try ctl(["assignments", "add", "from-ctl", "--selector", "role=edge"])
        #expect(assigned.status == 0 && assigned.output.contains("\"selector\" : \"role=edge\""), "\(assigned.output)")
        #expect(try ctl(["assignments", "list"]).output.contains("from-ctl"))
        let enrollment = try ctl(["enrollment-tokens", "create", "--label", "role=edge", "--uses", "3", "--ttl", "1h"])
        #expect(enrollment.status == 0 && enrollment.output.contains("weir_enroll_"), "\(enrollment.output)")
        let viewer = try ctl(["tokens", "create", "dashboards", "--role", "viewer"])
        #expect(viewer.status == 0 && viewer.output.contains("\"role\" : \"viewer\""))
        #expect(try ctl(["agents", "list"]).status == 0)

        let broken = coordinator.directory.appendingPathComponent("broken.yaml").path
        try "pipelines:\n  x:\n    stages: []\n".write(toFile: broken, atomically: true, encoding: .utf8)
        let refused = try ctl(["pipelines", "apply", "x", broken])
        #expect(refused.status == 1 && refused.output.contains("422") && refused.output.contains("a pipeline needs at least one stage"), "\(refused.output)")
        let missing = try ctl(["agents", "show", "nobody"])
        #expect(missing.status == 1 && missing.output.contains("404"))
    }

    @Test("a stopped agent shows offline after offline_after, and is removed after the retention; online agents stay")
    func offlineAndRetention() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki, heartbeat: "300ms", offlineAfter: "1s", retention: "3s")
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken()
        let staying = try Self.managedAgent("staying", coordinator: coordinator, token: token, labels: [:])
        let leaving = try Self.managedAgent("leaving", coordinator: coordinator, token: token, labels: [:])
        defer { staying.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("leaving"))??["online"] as? Bool == true })
        leaving.stop()
        #expect(eventually(timeout: 5) { (try? coordinator.agent("leaving"))??["online"] as? Bool == false })
        let metrics = try coordinator.request("GET", "/metrics", token: nil).1
        #expect(eventually(timeout: 3) {
            let text = (try? coordinator.request("GET", "/metrics", token: nil).1) ?? metrics
            return value(in: text, "weir_coordinator_agents", ["state": "offline"]) == 1 && value(in: text, "weir_coordinator_agents", ["state": "online"]) == 1
        })
        // The coordinator's own certificate, for the alert on certificates about to expire.
        let expiry = value(in: metrics, "weir_tls_certificate_expiry_timestamp_seconds", ["stage": "coordinator", "file": pki.path("coordinator.pem")])
        #expect(expiry == Double(try pki.notAfter(pki.path("coordinator.pem"))))
        #expect(eventually(timeout: 8) { (try? coordinator.request("GET", "/api/v1/agents/leaving", token: coordinator.adminToken).0) == 404 })
        #expect((try coordinator.agent("staying"))?["online"] as? Bool == true)
    }

    @Test("named lists: checked by the nftables stage's rules, pushed to agents, usable by documents, not deleted while used")
    func namedLists() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let agent = try Self.managedAgent("agent-l", coordinator: coordinator, token: try coordinator.enrollmentToken(), labels: [:])
        defer { agent.stop() }
        #expect(eventually(timeout: 10) { Self.inSync(coordinator, "agent-l") })
        let tokenFile = coordinator.directory.appendingPathComponent("state/admin.token").path
        let ctl = { (arguments: [String]) throws -> (status: Int32, output: String) in
            try runWeir(["ctl"] + arguments.prefix(1) + ["--url", coordinator.url, "--ca", pki.caPath, "--token-file", tokenFile] + arguments.dropFirst())
        }
        let created = try ctl(["lists", "set", "corp", "9.9.9.9", "2a00:1450::/32", "api.example.com"])
        #expect(created.status == 0, "\(created.output)")
        let added = try ctl(["lists", "add", "corp", "1.1.1.1", "--protected"])
        #expect(added.status == 0 && added.output.contains("\"protected\" : true"), "\(added.output)")
        #expect(try ctl(["lists", "remove", "corp", "9.9.9.9"]).status == 0)

        // The agent receives every list as one drop-in and applies it.
        let listsFile = agent.directory.appendingPathComponent("coordinator/bundle/lists.weir.yaml").path
        #expect(eventually(timeout: 5) { FileManager.default.fileExists(atPath: listsFile) && Self.inSync(coordinator, "agent-l") })
        let pushed = try String(contentsOfFile: listsFile, encoding: .utf8)
        #expect(pushed.contains("api.example.com") && pushed.contains("1.1.1.1") && !pushed.contains("9.9.9.9"))

        // The stage's rules: a private address needs allow_private; the error names the entry's line.
        let (badStatus, badBody) = try coordinator.request("PUT", "/api/v1/lists/bad", body: #"{"entries":["8.8.8.8","10.1.2.3"]}"#, token: coordinator.adminToken)
        #expect(badStatus == 422 && badBody.contains("lists/bad.yaml:6:9: lists.bad.entries[1]: 10.1.2.3 is not a public address"), "\(badBody)")

        // Documents may use lists; an unknown one is refused like on an agent.
        let user = """
            pipelines:
              egress:
                stages:
                  - type: enforce.nftables
                    allow_destinations: { interfaces: [eth9], lists: [LIST] }
            """
        let (unknown, unknownBody) = try coordinator.request(
            "PUT", "/api/v1/pipelines/egress", body: user.replacingOccurrences(of: "LIST", with: "nope"), contentType: "application/yaml",
            token: coordinator.adminToken)
        #expect(unknown == 422 && unknownBody.contains("unknown list \\\"nope\\\" (defined: corp)"), "\(unknownBody)")
        try coordinator.admin("PUT", "/api/v1/pipelines/egress", yaml: user.replacingOccurrences(of: "LIST", with: "corp"))
        let (inUse, inUseBody) = try coordinator.request("DELETE", "/api/v1/lists/corp", token: coordinator.adminToken)
        #expect(inUse == 409 && inUseBody.contains("used by pipeline document \\\"egress\\\""), "\(inUseBody)")
        try coordinator.admin("DELETE", "/api/v1/pipelines/egress")
        try coordinator.admin("DELETE", "/api/v1/lists/corp")
        #expect(eventually(timeout: 5) { !FileManager.default.fileExists(atPath: listsFile) && Self.inSync(coordinator, "agent-l") })
    }

    @Test("a database made before list kinds opens: its lists are destinations lists and keep their entries")
    func listsWithoutKind() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        let state = coordinator.directory.appendingPathComponent("state")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        let made = try command([python3, "-c", """
            import sqlite3, sys
            db = sqlite3.connect(sys.argv[1])
            db.execute("CREATE TABLE lists (name TEXT PRIMARY KEY, entries TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)")
            db.execute("INSERT INTO lists VALUES ('old', '[\\"9.9.9.9\\"]', 1)")
            db.commit()
            """, state.appendingPathComponent("coordinator.db").path])
        #expect(made.0 == 0, "\(made.1)")
        try coordinator.start()
        defer { coordinator.stop() }
        let list = try #require(try coordinator.admin("GET", "/api/v1/lists/old") as? [String: Any])
        #expect(list["kind"] as? String == "destinations" && list["entries"] as? [String] == ["9.9.9.9"], "\(list)")
        try coordinator.admin("PUT", "/api/v1/lists/names", json: ["kind": "dns_rules", "entries": ["||ads.example^"]])
        #expect((try coordinator.admin("GET", "/api/v1/lists/names") as? [String: Any])?["kind"] as? String == "dns_rules")
    }

    @Test("a relay in one call: entry and exit pipelines with a generated key, traffic encrypted between the agents")
    func relay() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken()
        let entry = try Self.managedAgent("entry-1", coordinator: coordinator, token: token, labels: ["role": "entry"])
        let exit = try Self.managedAgent("exit-1", coordinator: coordinator, token: token, labels: [:])
        defer { entry.stop(); exit.stop() }
        #expect(eventually(timeout: 10) { Self.inSync(coordinator, "entry-1") && Self.inSync(coordinator, "exit-1") })
        let echo = try Backends.echo()
        let publicPort = freePort(), exitPort = freePort()
        let relay: [String: Any] = [
            "name": "db", "entry": ["selector": "role=entry"], "listen": "127.0.0.1:\(publicPort)", "target": "127.0.0.1:\(echo.port)",
            "exit": ["agent": "exit-1", "listen": "127.0.0.1:\(exitPort)", "address": "127.0.0.1:\(exitPort)"],
        ]
        let created = try #require(try coordinator.admin("POST", "/api/v1/relays", json: relay) as? [String: Any])
        #expect(created["key"] == nil && created["cipher"] as? String == "chacha20-ietf-poly1305")
        #expect(eventually(timeout: 5) { Self.echoes(publicPort) }, "\(entry.log)\n\(exit.log)")
        #expect(Self.inSync(coordinator, "entry-1") && Self.inSync(coordinator, "exit-1"))
        // The exit speaks AEAD only: plain bytes to it reach nothing and are counted as failures.
        #expect(!Self.echoes(exitPort))
        #expect(try exit.waitForMetric("weir_pipeline_errors_total", ["pipeline": "relay-db", "stage": "transform.aead"]) { ($0 ?? 0) > 0 } != nil)
        // Same name again: conflict; a listen address that is no address: the validator's message.
        var duplicate = relay
        duplicate["listen"] = "127.0.0.1:\(freePort())"
        let body = String(decoding: try JSONSerialization.data(withJSONObject: duplicate), as: UTF8.self)
        #expect(try coordinator.request("POST", "/api/v1/relays", body: body, token: coordinator.adminToken).0 == 409)
        var invalid = relay
        invalid["name"] = "other"
        invalid["listen"] = "nowhere"
        let invalidBody = String(decoding: try JSONSerialization.data(withJSONObject: invalid), as: UTF8.self)
        let (status, text) = try coordinator.request("POST", "/api/v1/relays", body: invalidBody, token: coordinator.adminToken)
        #expect(status == 422 && text.contains("pipelines/relay.other.entry.yaml"), "\(text)")

        try coordinator.admin("DELETE", "/api/v1/relays/db")
        #expect(eventually(timeout: 5) { !Self.echoes(publicPort) })
    }

    @Test("every operation in /api/v1/openapi.json exists, and an agent's JSON has the documented fields")
    func openAPIMatchesRoutes() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let (status, text) = try coordinator.request("GET", "/api/v1/openapi.json", token: nil)
        #expect(status == 200)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let paths = try #require(document["paths"] as? [String: [String: Any]])
        #expect(paths.count >= 15)
        for (path, operations) in paths {
            let concrete = path.replacingOccurrences(of: "{id}", with: "no-such-thing").replacingOccurrences(of: "{name}", with: "no-such-thing")
                .replacingOccurrences(of: "{device}", with: "no-such-thing")
            for method in operations.keys {
                let (code, body) = try coordinator.request(method.uppercased(), concrete, body: method == "get" || method == "delete" ? nil : "{}",
                                                           token: coordinator.adminToken)
                // A route that does not exist answers 404 without naming the thing, or 405.
                let routeMissing = code == 405 || (code == 404 && !body.contains("no-such-thing") && !body.contains("not found"))
                #expect(!routeMissing, "\(method.uppercased()) \(path): \(code) \(body)")
            }
        }
        // Something undocumented is not there.
        #expect(try coordinator.request("GET", "/api/v1/no-such-route", token: coordinator.adminToken).0 == 404)

        let token = try coordinator.enrollmentToken()
        let agent = try Self.managedAgent("agent-doc", coordinator: coordinator, token: token, labels: ["k": "v"])
        defer { agent.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("agent-doc"))??["online"] as? Bool == true })
        let schemas = try #require((document["components"] as? [String: Any])?["schemas"] as? [String: [String: Any]])
        let documented = Set(((schemas["Agent"]?["properties"]) as? [String: Any])?.keys.map { $0 } ?? [])
        let served = Set(try #require(try coordinator.agent("agent-doc")).keys)
        #expect(served == documented)
    }

    @Test("VPN devices created 40 at once get 40 different addresses; one name asked for at once is one device; a full pool answers 409 and gives nothing out twice")
    func vpnAddressesUnderConcurrency() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        // A /26: 62 usable, minus the server's own .1 = 61 for devices.
        let results = try VPNAllocation.createConcurrently([coordinator], token: coordinator.adminToken, count: 40, poolPrefix: 26)
        #expect(results.allSatisfy { $0.0 == 201 }, "\(results.filter { $0.0 != 201 })")
        #expect(Set(results.map(\.1)).count == 40, "duplicates: \(results.map(\.1).sorted())")
        #expect(!results.contains { $0.1 == "10.77.0.1" || $0.1 == "10.77.0.0" })
        // One name asked for 8 times at once: one device; the losers' addresses go back (the pool fills exactly below).
        let lock = NSLock()
        nonisolated(unsafe) var statuses: [Int] = []
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            let status = (try? coordinator.request("POST", "/api/v1/vpn/users/u/devices", body: #"{"name":"same","server":"load"}"#, token: coordinator.adminToken))?.0 ?? 0
            lock.withLock { statuses.append(status) }
        }
        #expect(statuses.sorted() == [201] + Array(repeating: 409, count: 7), "\(statuses)")
        for index in 41..<61 {
            #expect(try coordinator.request("POST", "/api/v1/vpn/users/u/devices", body: #"{"name":"e\#(index)","server":"load"}"#, token: coordinator.adminToken).0 == 201)
        }
        let full = try coordinator.request("POST", "/api/v1/vpn/users/u/devices", body: #"{"name":"last","server":"load"}"#, token: coordinator.adminToken)
        #expect(full.0 == 409 && full.1.contains("is full"), "\(full)")
        let all = try #require(try coordinator.admin("GET", "/api/v1/vpn/users/u/devices") as? [[String: Any]])
        let addresses = all.compactMap { ($0["addresses"] as? [String])?.first }
        #expect(addresses.count == 61 && Set(addresses).count == 61 && !addresses.contains("10.77.0.63"))
    }

    @Test("bodies over max_request_body get 413 naming the limit on every operation that takes one, sized or chunked; nothing internal is shown")
    func requestBodyLimit() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki, settings: ["max_request_body: 64KiB"])
        try coordinator.start()
        defer { coordinator.stop() }
        let large = coordinator.directory.appendingPathComponent("large.yaml")
        // Valid YAML (a comment), so only its size can be refused.
        try ("# " + String(repeating: "x", count: 70_000) + "\npipelines: {}\n").write(to: large, atomically: true, encoding: .utf8)
        let small = coordinator.directory.appendingPathComponent("small.yaml")
        try ("# " + String(repeating: "x", count: 60_000) + "\npipelines: {}\n").write(to: small, atomically: true, encoding: .utf8)

        let (_, text) = try coordinator.request("GET", "/api/v1/openapi.json", token: nil)
        let paths = try #require((try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])?["paths"] as? [String: [String: [String: Any]]])
        // A route that looks its target up first answers 404 without reading the body: give it one.
        try coordinator.admin("PUT", "/api/v1/lists/x", json: ["entries": ["9.9.9.9"]])
        var checked = 0
        for (path, operations) in paths {
            for (method, operation) in operations where operation["requestBody"] != nil {
                let responses = operation["responses"] as? [String: Any]
                #expect(responses?["413"] != nil, "\(method) \(path) does not document 413")
                let concrete = path.replacingOccurrences(of: "{id}", with: "x").replacingOccurrences(of: "{name}", with: "x").replacingOccurrences(of: "{device}", with: "x")
                for chunked in [false, true] {
                    let (status, body) = try coordinator.request(
                        method.uppercased(), concrete, body: "@" + large.path, contentType: "application/yaml", token: coordinator.adminToken,
                        extraHeaders: chunked ? ["Transfer-Encoding: chunked"] : [])
                    #expect(status == 413, "\(method) \(path) chunked: \(chunked): \(status) \(body)")
                    #expect(body.contains("larger than 65536 bytes (coordinator.max_request_body)") && !body.contains("NIO"), "\(body)")
                }
                checked += 1
            }
        }
        #expect(checked >= 6)
        // Under the limit the body is read and judged on its content.
        let (status, body) = try coordinator.request("PUT", "/api/v1/pipelines/small", body: "@" + small.path, contentType: "application/yaml",
                                                     token: coordinator.adminToken)
        #expect(status == 201, "\(body)")
        #expect(!coordinator.log.contains("request failed"), "\(coordinator.log)")
    }

    @Test("an agent dials the coordinator by IP address: no SNI, the certificate's IP SAN is checked (and one without it is refused)")
    func ipLiteralURL() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let url = "wss://127.0.0.1:\(coordinator.port)"
        let agent = try WeirProcess(
            pipelines: "pipelines: {}",
            extra: try coordinator.agentSection(token: try coordinator.enrollmentToken(), labels: [:], agent: "agent-ip", url: url), id: "agent-ip")
        try agent.start()
        defer { agent.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("agent-ip"))??["online"] as? Bool == true }, "\(agent.log)")

        // The same address, but the certificate names only localhost: refused by the agent, never online.
        let otherPKI = try TestPKI()
        let named = try CoordinatorProcess(pki: otherPKI, certificateAddresses: [])
        try named.start()
        defer { named.stop() }
        let refused = try WeirProcess(
            pipelines: "pipelines: {}",
            extra: try named.agentSection(token: try named.enrollmentToken(), labels: [:], agent: "agent-ip2", url: "wss://127.0.0.1:\(named.port)"),
            id: "agent-ip2")
        try refused.start()
        defer { refused.stop() }
        #expect(eventually(timeout: 10) { refused.log.contains("coordinator connection failed") }, "\(refused.log)")
        #expect(refused.log.contains("the coordinator's certificate does not name 127.0.0.1"), "\(refused.log)")
        #expect((try named.agent("agent-ip2")) == nil)
        #expect(try refused.metric("weir_coordinator_connected") == 0)
    }

    @Test("roles: viewers see secret option values as <redacted> (API and weir ctl), operators and admins see them; operators cannot manage tokens")
    func secretsByRole() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let document = """
            pipelines:
              socks:   # users for the office
                stages:
                  - type: listen.socks5
                    address: 127.0.0.1:\(freePort())
                    users: {alice: alice-password-1}
                  - type: transform.aead
                    side: client
                    cipher: chacha20-ietf-poly1305
                    password: the-aead-password
                  - type: connect.tcp
                    addresses: [127.0.0.1:9]

            """
        try coordinator.admin("PUT", "/api/v1/pipelines/office", yaml: document)
        func token(_ role: String) throws -> String {
            try #require((coordinator.admin("POST", "/api/v1/tokens", json: ["name": role, "role": role]) as? [String: Any])?["token"] as? String)
        }
        let viewer = try token("viewer"), operatorToken = try token("operator")
        for path in ["/api/v1/pipelines/office", "/api/v1/pipelines"] {
            let (status, body) = try coordinator.request("GET", path, token: viewer)
            #expect(status == 200 && body.contains("<redacted>") && body.contains("# users for the office"), "\(body)")
            #expect(!body.contains("alice-password-1") && !body.contains("the-aead-password") && body.contains("alice"), "\(body)")
            for privileged in [operatorToken, coordinator.adminToken] {
                let (_, full) = try coordinator.request("GET", path, token: privileged)
                #expect(full.contains("alice-password-1") && full.contains("the-aead-password"), "\(full)")
            }
        }
        // weir ctl reads through the same API: a viewer's token shows the redacted document.
        let viewerFile = coordinator.directory.appendingPathComponent("viewer.token").path
        try viewer.write(toFile: viewerFile, atomically: true, encoding: .utf8)
        let shown = try runWeir(["ctl", "pipelines", "--url", coordinator.url, "--ca", pki.caPath, "--token-file", viewerFile, "show", "office"])
        #expect(shown.status == 0 && shown.output.contains("<redacted>") && !shown.output.contains("the-aead-password"), "\(shown.output)")

        // Operators change the fleet's configuration, not tokens.
        #expect(try coordinator.request("PUT", "/api/v1/pipelines/office2", body: document.replacingOccurrences(of: "socks:", with: "socks2:"),
                                        contentType: "application/yaml", token: operatorToken).0 == 201)
        let (tokenStatus, tokenBody) = try coordinator.request("POST", "/api/v1/tokens", body: #"{"name":"x","role":"admin"}"#, token: operatorToken)
        #expect(tokenStatus == 403 && tokenBody.contains("role operator, which cannot manage tokens"), "\(tokenBody)")
        #expect(try coordinator.request("POST", "/api/v1/enrollment-tokens", body: "{}", token: operatorToken).0 == 403)
        #expect(try coordinator.request("GET", "/api/v1/tokens", token: operatorToken).0 == 200)
    }
}
