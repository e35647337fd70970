import Foundation
import Testing

/// The web console in a real browser: headless Chromium driven by Selenium (Tests/browser/console_e2e.py)
/// against a real coordinator and two real agents. Screenshots of each page are kept as artefacts in
/// .build/artefacts/console (or $WEIR_ARTEFACTS/console).
@Suite(
    "web console in Chromium", .serialized,
    .enabled(
        if: FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium") && FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver"),
        "needs Debian's chromium and chromium-driver (make test installs them)"))
struct ConsoleBrowserTests {
    static var repository: URL { URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent() }

    static var artefacts: URL {
        let base = ProcessInfo.processInfo.environment["WEIR_ARTEFACTS"].map { URL(fileURLWithPath: $0) }
            ?? repository.appendingPathComponent(".build/artefacts")
        return base.appendingPathComponent("console")
    }

    @Test("sign in (a wrong password first); set up TOTP and sign in again with it; two agents online; a document edited with live validation, assigned to a label group, applied by both; one stopped turns offline live; label filter; labels edited on the agent page; a list made and a domain added reach an agent; the push watched live on the document page and a change previewed with its diff; a relay made in one form carries traffic; VPN plan, server, user and device; CSRF refused; audit; a viewer refused; an account locked out; no CSP violation")
    func fleet() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let agents = try [("edge-a", "a"), ("edge-b", "b")].map { id, site in
            try CoordinatorTests.managedAgent(id, coordinator: coordinator, token: try coordinator.enrollmentToken(labels: ["site": site, "role": "edge"]), labels: [:])
        }
        defer { for agent in agents { agent.stop() } }
        #expect(try coordinator.createConsoleAccount("olivia", role: "operator", password: "lantern harbour quiet 77").status == 0)
        #expect(try coordinator.createConsoleAccount("victor", role: "viewer", password: "velvet compass winter 31").status == 0)
        #expect(try coordinator.createConsoleAccount("locky", role: "operator", password: "saffron bridge tundra 64").status == 0)
        let echo = try Backends.echo()

        // Screenshots of this run only (a failure's is named failure.png).
        try? FileManager.default.removeItem(at: Self.artefacts)
        let script = Self.repository.appendingPathComponent("Tests/browser/console_e2e.py").path
        let environment = [
            "WEIR_URL=\(coordinator.url)", "WEIR_ACCOUNT=olivia", "WEIR_PASSWORD=lantern harbour quiet 77", "WEIR_AGENTS=edge-a,edge-b",
            "WEIR_STOP_PID=\(agents[1].pid)", "WEIR_SCREENSHOTS=\(Self.artefacts.path)", "WEIR_VIEWER=victor:velvet compass winter 31",
            "WEIR_LOCKED=locky", "WEIR_ECHO_PORT=\(echo.port)", "WEIR_FREE_PORTS=\(freePort()),\(freePort())",
        ]
        // Debian's python3: python3-selenium and python3-pyotp are installed for it.
        let (status, output) = try command(["env"] + environment + ["/usr/bin/python3", script])
        #expect(status == 0, "\(output)\ncoordinator log:\n\(coordinator.log.suffix(3000))")
        // The list added on the page reached the running agent (every agent gets every list).
        let deadline = Date().addingTimeInterval(10)
        var delivered = false
        while !delivered, Date() < deadline {
            let found = try command(["grep", "-rl", "approved.example.org", agents[0].directory.appendingPathComponent("coordinator").path])
            delivered = found.status == 0
            if !delivered { usleep(200_000) }
        }
        #expect(delivered, "the list reached edge-a")
        // The CSV the browser exported adds up to the first agent's own counters of the relay pipeline.
        let csv = try String(contentsOf: Self.artefacts.appendingPathComponent("traffic-first.csv"), encoding: .utf8)
        let rows = csv.split(separator: "\r\n").dropFirst().map { $0.split(separator: ",").map(String.init) }.filter { $0.count == 7 && $0[3] == "relay-via-b" }
        let exported = (rows.reduce(0.0) { $0 + (Double($1[4]) ?? 0) }, rows.reduce(0.0) { $0 + (Double($1[5]) ?? 0) })
        let report = try coordinator.admin("GET", "/api/v1/agents/edge-a/traffic") as? [String: [String: Any]]
        let counters = ((report?["relay-via-b"]?["bytes_in"] as? Double) ?? -1, (report?["relay-via-b"]?["bytes_out"] as? Double) ?? -1)
        #expect(exported == counters && exported.0 > 0, "CSV \(exported) vs the agent's \(counters)")
        // What the browser did as a viewer and to the locked account is in the audit trail.
        let trail = try coordinator.request("GET", "/api/v1/audit?limit=1000", token: coordinator.adminToken).1.replacingOccurrences(of: "\" : ", with: "\":")
        for entry in ["\"actor\":\"account:victor\"", "change relays", "change pipeline documents", "\"outcome\":\"locked\"", "login:locky"] {
            #expect(trail.contains(entry), "\(entry)\n\(trail.prefix(3000))")
        }
        for page in ["pipeline-preview", "relays", "vpn", "vpn-user", "viewer", "locked", "traffic", "pipeline", "pipeline-error", "agent", "list", "list-refused", "login", "two-factor-setup", "two-factor-recovery-codes", "two-factor-code", "fleet", "fleet-offline", "fleet-filtered", "audit"] {
            #expect(FileManager.default.fileExists(atPath: Self.artefacts.appendingPathComponent(page + ".png").path), "screenshot \(page)")
        }
    }
}
