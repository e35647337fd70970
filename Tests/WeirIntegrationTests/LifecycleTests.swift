import Foundation
import Testing

@Suite("agent lifecycle and metrics endpoint", .serialized)
struct LifecycleTests {
    @Test("A second agent on the same state directory refuses to start and names the first; kill -9 of the first frees it")
    func oneAgentPerStateDirectory() throws {
        let echo = try Backends.echo()
        let port = freePort()
        let first = try WeirProcess(pipelines: tcpForward("echo", port: port, to: [echo.port]))
        try first.start()
        let second = try runWeir(["agent", "--config", first.configPath])
        #expect(second.status != 0)
        #expect(second.output.contains("another weir agent (pid \(first.pid)) is running on the state directory \(first.directory.path)"), "\(second.output)")
        let lockMode = try FileManager.default.attributesOfItem(atPath: first.directory.path + "/agent.lock")[.posixPermissions] as? Int
        #expect(lockMode == 0o600)
        // The first is untouched: it still forwards.
        let client = try TCPClient(port: port)
        try client.send("ok")
        #expect(try client.receive(exactly: 2) == Array("ok".utf8))

        first.signal(SIGKILL)
        _ = first.waitForExit(timeout: 5)
        try first.start()
        defer { first.stop() }
        let again = try TCPClient(port: port)
        try again.send("up")
        #expect(try again.receive(exactly: 2) == Array("up".utf8))
    }

    @Test("SIGTERM stops accepting, lets open connections finish, then exits 0")
    func gracefulShutdownDrains() throws {
        let echo = try Backends.echo()
        let port = freePort()
        let agent = try WeirProcess(pipelines: tcpForward("echo", port: port, to: [echo.port]))
        try agent.start()
        let open = try TCPClient(port: port)
        try open.send("one")
        #expect(try open.receive(exactly: 3) == Array("one".utf8))

        agent.signal(SIGTERM)
        Thread.sleep(forTimeInterval: 0.5)
        #expect(agent.waitForExit(timeout: 0) == nil, "the agent waits for the open connection")
        #expect(throws: SocketError.self, "new connections are refused") { try TCPClient(port: port) }
        try open.send("two")
        #expect(try open.receive(exactly: 3) == Array("two".utf8), "the open connection still works while draining")
        open.shutdownWrite()
        _ = try open.receiveAll()
        #expect(agent.waitForExit(timeout: 5) == 0)
    }

    @Test("SIGTERM closes connections still open after shutdown_grace and exits 0")
    func graceExpires() throws {
        let echo = try Backends.echo()
        let port = freePort()
        let agent = try WeirProcess(pipelines: tcpForward("echo", port: port, to: [echo.port]))
        try agent.start()
        let open = try TCPClient(port: port)
        try open.send("x")
        _ = try open.receive(exactly: 1)
        let start = Date()
        agent.signal(SIGTERM)
        #expect(agent.waitForExit(timeout: 10) == 0)
        let waited = Date().timeIntervalSince(start)
        #expect(waited >= 2.5, "waited \(waited)s of the 3s grace")
        #expect(try open.receiveAll().isEmpty, "the connection was closed")
    }

    @Test("log.format json writes one JSON object per line to stderr")
    func jsonLogs() throws {
        let agent = try WeirProcess(pipelines: "pipelines: {}\n", logFormat: "json")
        try String(contentsOfFile: agent.configPath, encoding: .utf8)
            .replacingOccurrences(of: "level: debug", with: "level: info")
            .write(toFile: agent.configPath, atomically: true, encoding: .utf8)
        try agent.start()
        agent.stop()
        let lines = agent.log.split(separator: "\n").filter { !$0.isEmpty }
        #expect(!lines.isEmpty)
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["level"] != nil && object?["message"] != nil, "\(line)")
        }
        #expect(lines.contains { $0.contains("\"message\":\"agent started\"") })
    }

    @Test("The metrics port bounds what clients hold: at most 256 connections, silent or half-sent requests closed after 10 s, a kept-alive scraper kept")
    func metricsPortBounded() throws {
        let agent = try WeirProcess(pipelines: "pipelines: {}")
        try agent.start()
        defer { agent.stop() }
        let healthz = Array("GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n".utf8)
        let answer = Array("\r\n\r\nok\n".utf8)
        func ask(_ client: TCPClient) throws -> Bool {
            try client.send(healthz)
            var received: [UInt8] = []
            while !received.suffix(answer.count).elementsEqual(answer) {
                let more = try client.receive()
                if more.isEmpty { return false }
                received += more
            }
            return true
        }
        // Prometheus keeps its connection between scrapes.
        let scraper = try TCPClient(port: agent.metricsPort)
        #expect(try ask(scraper))
        let baseline = openDescriptors(pid: agent.pid)

        // 300 clients that say nothing and 20 that send half a request: no more than 256 are held.
        var stalled = try (0..<300).map { _ in try TCPClient(port: agent.metricsPort) }
        for _ in 0..<20 {
            let client = try TCPClient(port: agent.metricsPort)
            try client.send("GET /metr")
            stalled.append(client)
        }
        #expect(eventually(timeout: 2) { openDescriptors(pid: agent.pid) >= baseline + 255 })
        usleep(500_000)
        #expect(openDescriptors(pid: agent.pid) <= baseline + 256, "\(openDescriptors(pid: agent.pid)), baseline \(baseline)")
        // All closed once their request is overdue (10 s); descriptors back.
        #expect(eventually(timeout: 14) { openDescriptors(pid: agent.pid) <= baseline }, "\(openDescriptors(pid: agent.pid)), baseline \(baseline)")
        // Closed without an answer: an end of stream, or a reset for those whose half request was never read.
        for client in stalled { #expect((try? client.receiveAll())?.isEmpty ?? true) }

        // The scraper, idle all along (longer than the request timeout), still has its connection.
        #expect(try ask(scraper), "the kept-alive connection answers again")
        #expect(try agent.metric("weir_config_last_reload_successful") == 1)
    }

    @Test("/metrics passes promtool check metrics; /healthz answers; unknown paths are 404")
    func exposition() throws {
        let echo = try Backends.echo()
        let port = freePort()
        let agent = try WeirProcess(
            pipelines: "pipelines:\n" + tcpForwardEntry("echo", port: port, to: [echo.port, freePort()])
                + tcpForwardEntry("failing", port: freePort(), to: [freePort()]))
        try agent.start()
        defer { agent.stop() }
        let client = try TCPClient(port: port)
        try client.send("ping")
        _ = try client.receive(exactly: 4)

        #expect(try agent.httpGet("/healthz") == "ok\n")
        #expect(throws: AgentFailed.self) { try agent.httpGet("/nope") }
        let exposition = try agent.metrics()
        for name in ["weir_pipeline_bytes_total", "weir_pipeline_connections_total", "weir_pipeline_connections_active",
                     "weir_config_reloads_total", "weir_config_last_reload_successful", "weir_config_last_reload_timestamp_seconds"] {
            #expect(exposition.contains("# TYPE \(name) "), "\(name) missing")
        }
        // A standalone agent has no coordinator series: the alert on a disconnected agent must not fire for it.
        #expect(!exposition.contains("weir_coordinator_"), "\(exposition)")

        let (status, report) = try promtoolCheck(exposition)
        #expect(status == 0, "promtool: \(report)")
    }
}
