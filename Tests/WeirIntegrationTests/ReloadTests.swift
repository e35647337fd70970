import Foundation
import Testing

@Suite("SIGHUP hot reload", .serialized)
struct ReloadTests {
    /// Four pipelines: `keep` (an echo forward that must survive), and `drop`, `change`, a greeter each.
    struct Setup {
        let echo: TCPListener
        let greeterA: TCPListener
        let greeterB: TCPListener
        let keepPort: Int
        let dropPort: Int
        let changePort: Int
        let addPort: Int

        init() throws {
            // Backends bind first, so the free ports picked next cannot be one of theirs.
            echo = try Backends.echo()
            greeterA = try Backends.greeter("A")
            greeterB = try Backends.greeter("B")
            (keepPort, dropPort, changePort, addPort) = (freePort(), freePort(), freePort(), freePort())
        }

        func pipeline(_ id: String, port: Int, target: Int) -> String {
            tcpForwardEntry(id, port: port, to: [target])
        }

        var initial: String {
            "pipelines:\n" + pipeline("keep", port: keepPort, target: echo.port) + pipeline("drop", port: dropPort, target: greeterA.port)
                + pipeline("change", port: changePort, target: greeterA.port)
        }

        var next: String {
            "pipelines:\n" + pipeline("keep", port: keepPort, target: echo.port) + pipeline("change", port: changePort, target: greeterB.port)
                + pipeline("add", port: addPort, target: greeterB.port)
        }
    }

    func greeting(_ port: Int) throws -> String {
        String(decoding: try TCPClient(port: port).receiveAll(), as: UTF8.self)
    }

    func echoes(_ client: TCPClient, _ text: String) throws -> Bool {
        try client.send(text)
        return try client.receive(exactly: text.utf8.count) == Array(text.utf8)
    }

    /// Sends `count` bytes through an echo (from another thread, so neither side waits on the other) and reads
    /// them back.
    func echoesBulk(_ client: TCPClient, _ count: Int) throws -> Bool {
        let payload = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let sender = Background<Bool> { (try? client.send(payload)) != nil }
        let back = try client.receive(exactly: count)
        return try sender.value() && back == payload
    }

    @Test("A connection on an unchanged pipeline survives a reload that adds, removes and changes others")
    func unchangedPipelineKeepsConnections() throws {
        let setup = try Setup()
        let agent = try WeirProcess(pipelines: setup.initial)
        try agent.start()
        defer { agent.stop() }

        let held = try TCPClient(port: setup.keepPort)
        #expect(try echoes(held, "before reload"))
        #expect(try greeting(setup.changePort) == "A")

        try agent.writePipelines(setup.next)
        try agent.reload()

        #expect(try echoes(held, "after reload"), "the open connection of the unchanged pipeline still works")
        #expect(try greeting(setup.changePort) == "B", "the changed pipeline uses its new target")
        #expect(try greeting(setup.addPort) == "B", "the added pipeline listens")
        #expect(throws: SocketError.self, "the removed pipeline no longer listens") { try TCPClient(port: setup.dropPort) }
        #expect(try agent.metric("weir_config_reloads_total", ["result": "success"]) == 2)
        #expect(try agent.metric("weir_config_last_reload_successful") == 1)
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "drop"]) == nil, "removed pipelines' series go")
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "keep"]) == 1)
    }

    @Test("An invalid configuration leaves the running one untouched and counts a failure")
    func invalidConfigKeepsRunningOne() throws {
        let setup = try Setup()
        let agent = try WeirProcess(pipelines: setup.initial)
        try agent.start()
        defer { agent.stop() }
        let held = try TCPClient(port: setup.keepPort)

        try agent.writePipelines("pipelines:\n  broken:\n    stages:\n      - type: listen.tcp\n        adress: 1.2.3.4:80\n")
        try agent.reload()

        #expect(try agent.metric("weir_config_reloads_total", ["result": "failure"]) == 1)
        #expect(try agent.metric("weir_config_last_reload_successful") == 0)
        #expect(try echoes(held, "still here"))
        #expect(try greeting(setup.dropPort) == "A")
        #expect(try greeting(setup.changePort) == "A")
        #expect(agent.log.contains("unknown key \"adress\""))
    }

    @Test("A port conflict during reload rolls back to the previous configuration")
    func portConflictRollsBack() throws {
        let setup = try Setup()
        let agent = try WeirProcess(pipelines: setup.initial)
        try agent.start()
        defer { agent.stop() }
        let squatter = try TCPListener(port: setup.addPort)  // someone else holds the new pipeline's port

        try agent.writePipelines(setup.next)
        try agent.reload()

        #expect(try agent.metric("weir_config_reloads_total", ["result": "failure"]) == 1)
        #expect(try agent.metric("weir_config_last_reload_successful") == 0)
        #expect(try greeting(setup.changePort) == "A", "the changed pipeline is back on its old target")
        #expect(try greeting(setup.dropPort) == "A", "the pipeline to be removed still runs")
        let held = try TCPClient(port: setup.keepPort)
        #expect(try echoes(held, "unchanged"))
        _ = squatter

        // Once the port is free the same reload goes through.
        squatter.shutdownListener()
        _ = consume squatter
        try agent.reload()
        #expect(try agent.metric("weir_config_reloads_total", ["result": "success"]) == 2)
        #expect(try greeting(setup.addPort) == "B")
    }

    @Test("metrics.listen moves on reload; a new address that is taken keeps the old endpoint")
    func metricsEndpointMoves() throws {
        let agent = try WeirProcess(pipelines: "pipelines: {}\n")
        try agent.start()
        defer { agent.stop() }
        let oldPort = agent.metricsPort
        let main = try String(contentsOfFile: agent.configPath, encoding: .utf8)

        let squatter = try TCPListener()
        try main.replacingOccurrences(of: "127.0.0.1:\(oldPort)", with: "127.0.0.1:\(squatter.port)")
            .write(toFile: agent.configPath, atomically: true, encoding: .utf8)
        try agent.reload()
        #expect(try agent.metric("weir_config_reloads_total", ["result": "failure"]) == 1, "the old endpoint still answers")

        let newPort = freePort()
        try main.replacingOccurrences(of: "127.0.0.1:\(oldPort)", with: "127.0.0.1:\(newPort)")
            .write(toFile: agent.configPath, atomically: true, encoding: .utf8)
        agent.signal(SIGHUP)
        var moved = false
        for _ in 0..<100 where !moved {
            usleep(50_000)
            moved = (try? TCPClient(port: newPort, timeout: 1)) != nil
        }
        #expect(moved, "the endpoint listens on the new address")
        #expect(throws: SocketError.self, "and no longer on the old one") { try TCPClient(port: oldPort) }
        _ = squatter
    }

    @Test("Changing a pipeline but not its listener keeps the socket: no refused connection in between")
    func changedPipelineAdoptsSocket() throws {
        let setup = try Setup()
        let agent = try WeirProcess(pipelines: setup.initial)
        try agent.start()
        defer { agent.stop() }
        let stop = Background<Int> {
            var refused = 0
            let end = Date().addingTimeInterval(2)
            while Date() < end {
                do { _ = try TCPClient(port: setup.changePort).receiveAll() } catch { refused += 1 }
            }
            return refused
        }
        Thread.sleep(forTimeInterval: 0.3)
        try agent.writePipelines(setup.next)
        try agent.reload()
        #expect(try stop.value() == 0)
        #expect(try greeting(setup.changePort) == "B")
    }

    @Test("A kept listen.tcp socket moves between a plain forward (spliced) and a pipeline through channels (a target by name); each connection keeps the pipeline that accepted it")
    func keptSocketSwitchesBetweenSplicingAndChannels() throws {
        let echo = try Backends.echo()
        let port = freePort()
        let plain = "pipelines:\n" + tcpForwardEntry("web", port: port, to: [echo.port])
        // A name to resolve takes the connector off the relay (NIO's happy-eyeballs connect).
        let limited = "pipelines:\n" + tcpForwardEntry("web", port: port, to: [echo.port], targetHost: "localhost")
        let agent = try WeirProcess(pipelines: plain)
        try agent.start()
        defer { agent.stop() }
        let pipesAtStart = pipeDescriptors(pid: agent.pid)
        let spliced = try TCPClient(port: port)
        #expect(try echoes(spliced, "copied"))
        #expect(pipeDescriptors(pid: agent.pid) == pipesAtStart, "small messages are copied")
        #expect(try echoesBulk(spliced, 1 << 20))
        let pipesAfterSplicing = pipeDescriptors(pid: agent.pid)
        #expect(pipesAfterSplicing > pipesAtStart, "a plain forward's bulk bytes go through a pipe (kept in the thread's pool)")

        try agent.writePipelines(limited)
        try agent.reload()
        let channeled = try TCPClient(port: port)
        #expect(try echoesBulk(channeled, 1 << 20))
        #expect(pipeDescriptors(pid: agent.pid) == pipesAfterSplicing, "a pipeline with a named target passes its bytes through NIO channels")
        #expect(try echoes(spliced, "still spliced"), "the first connection stays with the pipeline that accepted it")

        try agent.writePipelines(plain)
        try agent.reload()
        let splicedAgain = try TCPClient(port: port)
        #expect(try echoes(splicedAgain, "spliced again"))
        #expect(try echoes(channeled, "still through channels"))
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "web"]) == 3)
    }
}
