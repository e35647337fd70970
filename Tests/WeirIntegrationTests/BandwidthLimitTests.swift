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

    /// Sends as fast as possible for `seconds`, then waits until the backend has read everything.
    func upload(port: Int) throws {
        let client = try TCPClient(port: port)
        let chunk = [UInt8](repeating: 1, count: 64 * 1024)
        let start = Date()
        while Date().timeIntervalSince(start) < Self.seconds {
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
        let started = Date()
        try upload(port: port)
        let measured = log.receiveRate(since: started)
        #expect(abs(measured - Self.rate) / Self.rate < 0.10, "measured \(measured / 1_048_576) MiB/s for 4 MiB/s")
    }

    @Test("Download (target to client) is held within 10% of the rate")
    func downloadAccuracy() throws {
        let source = try Backends.source(seconds: 30)
        let port = freePort()
        let weir = try agent(per: "connection", backend: source.port, port: port)
        try weir.start()
        defer { weir.stop() }
        let client = try TCPClient(port: port)
        let start = Date()
        var received = 0
        while Date().timeIntervalSince(start) < Self.seconds {
            received += try client.receive().count
        }
        let measured = Double(received) / Date().timeIntervalSince(start)
        #expect(abs(measured - Self.rate) / Self.rate < 0.10, "measured \(measured / 1_048_576) MiB/s for 4 MiB/s")
    }

    @Test("per: pipeline shares one rate between connections")
    func sharedByPipeline() throws {
        let log = BackendLog()
        let sink = try Backends.sink(log: log)
        let port = freePort()
        let weir = try agent(per: "pipeline", backend: sink.port, port: port)
        try weir.start()
        defer { weir.stop() }
        let started = Date()
        let first = Background { try self.upload(port: port) }
        let second = Background { try self.upload(port: port) }
        try first.value()
        try second.value()
        let total = log.receiveRate(since: started)
        #expect(abs(total - Self.rate) / Self.rate < 0.10, "two connections together: \(total / 1_048_576) MiB/s for 4 MiB/s")
    }
}
