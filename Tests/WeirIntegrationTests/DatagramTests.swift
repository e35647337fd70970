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
        var answered = false
        for _ in 0..<5 where !answered {
            try client.send(Array("ping".utf8), to: port)
            answered = client.receive()?.bytes == Array("ping".utf8)
        }
        #expect(answered)
        #expect(try agent.metric("weir_pipeline_errors_total", ["pipeline": "udp", "reason": "target_unreachable"]) ?? 0 >= 1)
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
