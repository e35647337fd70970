import Foundation
import Testing

@Suite("limit.bandwidth against real transfers", .serialized)
struct BandwidthLimitTests {
    static let rate = 4.0 * 1024 * 1024  // 4MiB/s
    static let seconds = 3.0

    func agent(per: String, backend: Int, port: Int) throws -> WeirProcess {
        try WeirProcess(pipelines: tcpForward(
            "limited", port: port, to: [backend],
            extraStages: "      - type: limit.bandwidth\n        rate: 4MiB/s\n        per: \(per)\n"))
    }

    /// Measures up to three times until a reading is within 10% of the rate; no reading may exceed it by more.
    /// A busy machine can slow a transfer down (the CI runner shares two CPUs), never speed the limiter up.
    func expectRate(_ what: String, _ measure: () throws -> Double) throws {
        var readings: [Double] = []
        for _ in 0..<3 {
            let reading = try measure()
            readings.append(reading / 1_048_576)
            #expect(reading < Self.rate * 1.10, "\(what): \(reading / 1_048_576) MiB/s for 4 MiB/s")
            if abs(reading - Self.rate) / Self.rate < 0.10 { return }
        }
        Issue.record("\(what): \(readings) MiB/s, expected 4 MiB/s ± 10%")
    }

    /// Sends as fast as possible for `seconds`, then waits until the backend has read everything.
    func upload(port: Int) throws {
        let client = try TCPClient(port: port)
        let chunk = [UInt8](repeating: 1, count: 64 * 1024)
        let start = monotonicSeconds()
        while monotonicSeconds() - start < Self.seconds {
            try client.send(chunk)
        }
        client.shutdownWrite()
        _ = try client.receiveAll()
    }

    @Test("Upload (client to target) is held within 10% of the rate")
    func uploadAccuracy() throws {
        let log = BackendLog()
        let sink = try Backends.sink(log: log)
        let port = freePort()
        let weir = try agent(per: "connection", backend: sink.port, port: port)
        try weir.start()
        defer { weir.stop() }
        try expectRate("upload") {
            let started = monotonicSeconds()
            try upload(port: port)
            return log.receiveRate(since: started)
        }
    }

    @Test("Download (target to client) is held within 10% of the rate, relayed on raw sockets (bulk through a pipe)")
    func downloadAccuracy() throws {
        let source = try Backends.source(seconds: 30)
        let port = freePort()
        let weir = try agent(per: "connection", backend: source.port, port: port)
        try weir.start()
        defer { weir.stop() }
        let pipesAtStart = pipeDescriptors(pid: weir.pid)
        var pipesDuring = 0
        try expectRate("download") {
            let client = try TCPClient(port: port)
            let start = monotonicSeconds()
            var received = 0
            while monotonicSeconds() - start < Self.seconds {
                received += try client.receive().count
                if pipesDuring == 0, monotonicSeconds() - start > 1 { pipesDuring = pipeDescriptors(pid: weir.pid) }
            }
            return Double(received) / (monotonicSeconds() - start)
        }
        // A plain forward with only limit.bandwidth between is relayed like one without: its bulk bytes are
        // spliced through a pipe of the relay thread's pool (a channel pipeline holds none).
        #expect(pipesDuring > pipesAtStart, "pipes: \(pipesAtStart) at start, \(pipesDuring) during the transfer")
    }

    @Test("A paced relayed connection whose client stalls and resets mid-transfer is closed; nothing stays held")
    func pacedClientResets() throws {
        let source = try Backends.source(seconds: 30)
        let port = freePort()
        let weir = try agent(per: "connection", backend: source.port, port: port)
        try weir.start()
        defer { weir.stop() }
        let baseline = openDescriptors(pid: weir.pid)
        var clients: [TCPClient] = []
        for _ in 0..<50 {
            let client = try TCPClient(port: port)
            _ = try client.receive()
            clients.append(client)
        }
        // They read nothing more: the relay waits on their windows and on its buckets at once.
        Thread.sleep(forTimeInterval: 1)
        for client in clients { client.resetOnClose() }
        clients.removeAll()
        #expect(eventually(timeout: 10) { openDescriptors(pid: weir.pid) <= baseline }, "descriptors \(openDescriptors(pid: weir.pid)), baseline \(baseline)")
        #expect(try weir.waitForMetric("weir_pipeline_connections_active", ["pipeline": "limited"]) { $0 == 0 } == 0)
        let late = try TCPClient(port: port)
        #expect(try late.receive().count > 0, "still serves")
    }

    @Test("per: pipeline shares one rate between connections")
    func sharedByPipeline() throws {
        let log = BackendLog()
        let sink = try Backends.sink(log: log)
        let port = freePort()
        let weir = try agent(per: "pipeline", backend: sink.port, port: port)
        try weir.start()
        defer { weir.stop() }
        try expectRate("two connections together") {
            let started = monotonicSeconds()
            let first = Background { try self.upload(port: port) }
            let second = Background { try self.upload(port: port) }
            try first.value()
            try second.value()
            return log.receiveRate(since: started)
        }
    }
}
