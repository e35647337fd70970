import Foundation
import Testing

@Suite("UDP forwarding through the real agent", .serialized)
struct DatagramTests {
    @Test("Datagrams round-trip per client session; idle sessions expire; a new datagram opens a new one")
    func roundTripsAndIdleExpiry() throws {
        let echo = try UDPEchoServer()
        let port = freePort()
        let agent = try WeirProcess(pipelines: udpForward("udp", port: port, to: [echo.port], connectOptions: "        idle_timeout: 1s"))
        try agent.start()
        defer { agent.stop() }

        let clientA = try UDPSocket()
        let clientB = try UDPSocket()
        for index in 0..<20 {
            let a = Array("a-\(index)".utf8), b = Array("b-\(index)-longer".utf8)
            try clientA.send(a, to: port)
            try clientB.send(b, to: port)
            let replyA = try #require(clientA.receive())
            let replyB = try #require(clientB.receive())
            #expect(replyA.bytes == a)
            #expect(replyA.port == port, "replies come from the listening address")
            #expect(replyB.bytes == b)
        }
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "udp"]) == 2)
        #expect(try agent.metric("weir_pipeline_connections_active", ["pipeline": "udp"]) == 2)
        let bytesIn = try agent.metric("weir_pipeline_bytes_total", ["pipeline": "udp", "direction": "in"])
        let expectedIn = (0..<20).reduce(0) { $0 + "a-\($1)".utf8.count + "b-\($1)-longer".utf8.count }
        #expect(bytesIn == Double(expectedIn))

        let active = try agent.waitForMetric("weir_pipeline_connections_active", ["pipeline": "udp"], timeout: 4) { $0 == 0 }
        #expect(active == 0, "sessions idle for 1s are closed")

        try clientA.send(Array("again".utf8), to: port)
        #expect(clientA.receive()?.bytes == Array("again".utf8))
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "udp"]) == 3)
    }

    @Test("A target that answers ICMP unreachable is passed over for the next one")
    func failoverOnUnreachable() throws {
        let echo = try UDPEchoServer()
        let dead = try UDPSocket()
        let deadPort = dead.port
        _ = consume dead  // closed: the kernel answers port unreachable
        let port = freePort()
        let agent = try WeirProcess(pipelines: udpForward("udp", port: port, to: [deadPort, echo.port]))
        try agent.start()
        defer { agent.stop() }
        let client = try UDPSocket(timeout: 1)
        #expect(try client.echoed(Array("ping".utf8), through: port, attempts: 5))
        #expect(try agent.metric("weir_pipeline_errors_total", ["pipeline": "udp", "reason": "target_unreachable"]) ?? 0 >= 1)
    }
}

@Suite("UDP sessions at production scale", .serialized)
struct DatagramScaleTests {
    @Test("A burst of 3,000 new clients at once is answered in full (the agent past descriptor 1024, a reload meanwhile keeps the sessions); idle sessions give their sockets back; max_sessions bounds the table across the listener's sockets and follows a reload")
    func burstOfNewClients() throws {
        let echo = try UDPEchoServer()
        let echoPort = echo.port
        let open = freePort(), bounded = freePort()
        let pipelines = { (maxSessions: Int) in
            "pipelines:\n" + udpForwardEntry("open", port: open, to: [echoPort], connectOptions: "        idle_timeout: 5s") + "\n"
                + udpForwardEntry("bounded", port: bounded, to: [echoPort], connectOptions: "        max_sessions: \(maxSessions)")
        }
        let agent = try WeirProcess(pipelines: pipelines(400))
        try agent.start()
        defer { agent.stop() }
        let baseline = openDescriptors(pid: agent.pid)

        // Each client gets its own bytes back, from the listening port; nothing is lost in the burst.
        let burst = try Background { try UDPBurst.send(clients: 3_000, to: open, quiet: 3) }
        var highest = 0
        let deadline = Date().addingTimeInterval(60)
        while try agent.metric("weir_pipeline_connections_active", ["pipeline": "open"]) ?? 0 < 3_000, Date() < deadline {
            highest = max(highest, highestDescriptor(pid: agent.pid))
            usleep(20_000)
        }
        highest = max(highest, highestDescriptor(pid: agent.pid))
        // A reload with the 3,000 sessions open (the agent past descriptor 1024): the other pipeline's table
        // bound changes, its sockets are kept, and so are these sessions.
        try agent.writePipelines(pipelines(500))
        try agent.reload()
        #expect(try agent.metric("weir_pipeline_connections_active", ["pipeline": "open"]) == 3_000, "sessions kept by the reload")
        let (answered, wrong) = try burst.value(timeout: 120)
        #expect(answered == 3_000 && wrong == 0, "\(answered) answered, \(wrong) wrong")
        #expect(highest > 1024, "highest descriptor \(highest)")
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "open"]) == 3_000)
        #expect(try agent.metric("weir_pipeline_bytes_total", ["pipeline": "open", "direction": "in"]) == 3_000 * 40)
        #expect(try agent.metric("weir_pipeline_bytes_total", ["pipeline": "open", "direction": "out"]) == 3_000 * 40)
        let idle = try agent.waitForMetric("weir_pipeline_connections_active", ["pipeline": "open"], timeout: 10) { $0 == 0 }
        #expect(idle == 0, "idle sessions are closed")
        #expect(eventually(timeout: 5) { openDescriptors(pid: agent.pid) <= baseline }, "descriptors back to \(baseline): \(openDescriptors(pid: agent.pid))")

        // The bounded pipeline's table (its new bound, 500): exactly the first 500 clients get sessions, over
        // both of its sockets together, and the rest are counted.
        let limited = try UDPBurst.send(clients: 3_000, to: bounded)
        #expect(limited.answered == 500 && limited.wrong == 0, "\(limited)")
        #expect(try agent.metric("weir_pipeline_connections_active", ["pipeline": "bounded"]) == 500)
        #expect(try agent.metric("weir_pipeline_errors_total", ["pipeline": "bounded", "stage": "connect.udp", "reason": "session_limit"]) == 2_500)
    }

    @Test("Sessions keep flowing through a reload that changes their pipeline; datagrams of 0 and 65,507 bytes round-trip; a target named by a host name is resolved")
    func sessionsAcrossReloads() throws {
        let echo = try UDPEchoServer()
        let port = freePort()
        let agent = try WeirProcess(pipelines: udpForward("udp", port: port, to: [echo.port]))
        try agent.start()
        defer { agent.stop() }
        let client = try UDPSocket()
        for size in [0, 1, 1_472, 65_507] {
            let datagram = [UInt8]((0..<size).map { UInt8(truncatingIfNeeded: $0) })
            try client.send(datagram, to: port)
            #expect(client.receive()?.bytes == datagram, "\(size) bytes")
        }
        // The pipeline changes (a limit added); the listener stays, and so does the client's session.
        try agent.writePipelines(udpForward(
            "udp", port: port, to: [echo.port], extraStages: "      - type: limit.bandwidth\n        rate: 10MiB/s\n"))
        try agent.reload()
        try client.send(Array("after".utf8), to: port)
        #expect(client.receive()?.bytes == Array("after".utf8))
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "udp"]) == 1, "the session was kept")
        // A new client's session goes by the new pipeline, to a target named by host name.
        try agent.writePipelines(udpForward("udp", port: port, to: [echo.port], targetHost: "localhost"))
        try agent.reload()
        let newcomer = try UDPSocket(timeout: 1)
        // localhost may resolve to ::1 first, where nothing listens: that target is passed over.
        #expect(try newcomer.echoed(Array("named".utf8), through: port, attempts: 5))
        try client.send(Array("still".utf8), to: port)
        #expect(client.receive()?.bytes == Array("still".utf8))
    }
}

@Suite("limit.bandwidth on UDP", .serialized)
struct DatagramLimitTests {
    @Test("Datagrams beyond the bucket are dropped, not queued")
    func policesDatagrams() throws {
        let echo = try UDPEchoServer()
        let port = freePort()
        let agent = try WeirProcess(pipelines: udpForward(
            "policed", port: port, to: [echo.port],
            extraStages: "      - type: limit.bandwidth\n        rate: 8KiB/s\n        burst: 32768\n"))
        try agent.start()
        defer { agent.stop() }
        let client = try UDPSocket(timeout: 1)
        let datagram = [UInt8](repeating: 7, count: 1024)
        for _ in 0..<128 { try client.send(datagram, to: port) }
        var echoed = 0
        while client.receive() != nil { echoed += 1 }
        // A 32 KiB bucket passes 32 datagrams of 1 KiB (plus the one that may take it into debt, plus what
        // refills at 8 KiB/s while they are sent); the rest of the 128 are dropped.
        let admitted = Int(try #require(try agent.metric("weir_pipeline_bytes_total", ["pipeline": "policed", "direction": "in"]))) / 1024
        #expect((32...40).contains(admitted), "\(admitted) of 128 datagrams admitted")
        #expect((32...admitted).contains(echoed), "\(echoed) echoes of \(admitted) admitted datagrams")
    }
}
