import Foundation
import Testing

/// The relay chain users build: client -> entry agent -> (aead inside websocket inside tls) -> exit agent ->
/// service, with two exits and connect.relay failing over between them. Three agents, all on loopback.
@Suite(
    "Entry to exit relay over tls+websocket+aead with failover", .serialized,
    .enabled(if: which("openssl") != nil, "needs openssl installed"))
struct RelayTests {
    static func exitAgent(port: Int, pki: TestPKI) throws -> WeirProcess {
        try WeirProcess(pipelines: """
            pipelines:
              exit:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(port)
                  - type: transform.tls
                    side: server
                    certificate: \(pki.path("exit.pem"))
                    key: \(pki.path("exit.key"))
                  - type: transform.websocket
                    side: server
                    path: /relay
                  - type: transform.aead
                    side: server
                    cipher: aes-256-gcm
                    password: relay secret
                  - type: connect.tcp
            """)
    }

    static func entryAgent(port: Int, exits: [Int], service: Int, pki: TestPKI) throws -> WeirProcess {
        try WeirProcess(pipelines: """
            pipelines:
              entry:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(port)
                  - type: transform.aead
                    side: client
                    cipher: aes-256-gcm
                    password: relay secret
                    target: 127.0.0.1:\(service)
                  - type: transform.websocket
                    side: client
                    host: exit.weir.test
                    path: /relay
                  - type: transform.tls
                    side: client
                    ca: \(pki.caPath)
                    server_name: exit.weir.test
                  - type: connect.relay
                    peers: [\(exits.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]
                    connect_timeout: 2s
                    keepalive: 1s
            """)
    }

    @Test("64 MiB byte-exact through the relay; killing the first exit fails over to the second; it is preferred again once back")
    func relayWithFailover() throws {
        let pki = try TestPKI()
        try pki.issue("exit", dnsNames: ["exit.weir.test"])
        let service = try Backends.echo()
        let portA = freePort(), portB = freePort(), entryPort = freePort()
        let exitA = try Self.exitAgent(port: portA, pki: pki)
        let exitB = try Self.exitAgent(port: portB, pki: pki)
        try exitA.start()
        try exitB.start()
        defer { exitA.stop(); exitB.stop() }
        let entry = try Self.entryAgent(port: entryPort, exits: [portA, portB], service: service.port, pki: pki)
        try entry.start()
        defer { entry.stop() }
        let peerA = ["pipeline": "entry", "peer": "127.0.0.1:\(portA)"], peerB = ["pipeline": "entry", "peer": "127.0.0.1:\(portB)"]

        #expect(try echoMismatch(port: entryPort, size: 64 << 20, seed: 1) == nil, "64 MiB each way byte-exact")
        #expect(try exitA.metric("weir_pipeline_connections_total", ["pipeline": "exit"]) == 1)
        #expect((try exitB.metric("weir_pipeline_connections_total", ["pipeline": "exit"]) ?? 0) == 0)
        #expect(try entry.metric("weir_relay_peer_up", peerA) == 1)
        let latency = try #require(try entry.metric("weir_relay_latency_seconds", peerA))
        #expect(latency > 0 && latency < 0.5, "loopback round trip: \(latency) s")

        // The first exit dies; the next connection goes to the second. While the first is down (1 s after
        // its failure) it is not tried first: the connection right after makes no new attempt on it. Both
        // are small so they fit in that second even in a debug build on a busy machine.
        exitA.signal(SIGKILL)
        _ = exitA.waitForExit(timeout: 5)
        let second = try echoMismatch(port: entryPort, size: 4096, seed: 2)
        #expect(second == nil, "served by the second exit: \(second ?? "")")
        let failures = try entry.metric("weir_relay_connect_failures_total", peerA)
        let third = try echoMismatch(port: entryPort, size: 4096, seed: 3)
        #expect(third == nil, "\(third ?? "")")
        #expect(try entry.metric("weir_relay_connect_failures_total", peerA) == failures, "the failed exit is not retried at once")
        #expect((failures ?? 0) >= 1)
        #expect(try exitB.metric("weir_pipeline_connections_total", ["pipeline": "exit"]) == 2)
        #expect(try entry.metric("weir_relay_peer_up", peerA) == 0)
        #expect((try entry.metric("weir_relay_latency_seconds", peerB) ?? 0) > 0)
        #expect(try echoMismatch(port: entryPort, size: 1 << 20, seed: 5) == nil, "1 MiB through the second exit")

        // Back up: after its retry time the first exit is preferred again.
        try exitA.start()
        Thread.sleep(forTimeInterval: 2.2)
        #expect(try echoMismatch(port: entryPort, size: 4096, seed: 4) == nil)
        #expect(try exitA.metric("weir_pipeline_connections_total", ["pipeline": "exit"]) == 1, "the restarted exit serves again")
        #expect(try entry.metric("weir_relay_peer_up", peerA) == 1)
    }
}
