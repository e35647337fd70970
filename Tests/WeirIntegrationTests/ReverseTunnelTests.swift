import Foundation
import Testing

/// listen.reverse and connect.reverse: a service on an "inner" agent that only dials out, published on a
/// "public" agent. The tunnel is TLS (the inner agent proves who it is) carrying HTTP/2 streams. All on loopback.
@Suite(
    "Reverse tunnel (listen.reverse -> connect.reverse)", .serialized,
    .enabled(if: which("openssl") != nil && which("curl") != nil, "needs openssl and curl installed"))
struct ReverseTunnelTests {
    static func publicAgent(port: Int, tunnelPort: Int, pki: TestPKI, maxIdleTunnels: Int = 64, handshakeTimeout: String = "10s", keepalive: String = "1s") throws -> WeirProcess {
        try WeirProcess(pipelines: """
            pipelines:
              publish:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(port)
                  - type: transform.mux
                    side: client
                    keepalive: \(keepalive)
                  - type: transform.tls
                    side: client
                    ca: \(pki.caPath)
                    server_name: inner.weir.test
                    handshake_timeout: \(handshakeTimeout)
                  - type: connect.reverse
                    listen: 127.0.0.1:\(tunnelPort)
                    connect_timeout: 3s
                    max_idle_tunnels: \(maxIdleTunnels)
            """)
    }

    static func innerAgent(tunnelPort: Int, service: Int, pki: TestPKI, name: String = "inner") throws -> WeirProcess {
        try WeirProcess(pipelines: """
            pipelines:
              published:
                stages:
                  - type: listen.reverse
                    peers: [127.0.0.1:\(tunnelPort)]
                    max_backoff: 2s
                  - type: transform.tls
                    side: server
                    certificate: \(pki.path("\(name).pem"))
                    key: \(pki.path("\(name).key"))
                  - type: transform.mux
                    side: server
                  - type: connect.tcp
                    addresses: [127.0.0.1:\(service)]
            """)
    }

    @Test("A request reaches the inner agent's service through the tunnel; after the public agent restarts the tunnel comes back")
    func servesAndRecovers() throws {
        let pki = try TestPKI()
        try pki.issue("inner", dnsNames: ["inner.weir.test"])
        let web = try ProxyListenerTests.WebServer()
        let port = freePort(), tunnelPort = freePort()
        let publicSide = try Self.publicAgent(port: port, tunnelPort: tunnelPort, pki: pki)
        try publicSide.start()
        defer { publicSide.stop() }
        let inner = try Self.innerAgent(tunnelPort: tunnelPort, service: web.port, pki: pki)
        try inner.start()
        defer { inner.stop() }
        #expect(eventually(timeout: 5) { (try? inner.metric("weir_reverse_tunnels_open", ["pipeline": "published"])) == 1 })

        let url = "http://127.0.0.1:\(port)/file.txt"
        for _ in 0..<3 {
            let fetched = try ProxyListenerTests.curl([url])
            #expect(fetched.status == 0 && fetched.body == web.content, "\(fetched)")
        }
        #expect(try inner.metric("weir_pipeline_connections_total", ["pipeline": "published"]) == 3, "three requests, three streams")

        // The public agent goes away and comes back: the inner agent dials again by itself.
        publicSide.signal(SIGKILL)
        _ = publicSide.waitForExit(timeout: 5)
        #expect(eventually(timeout: 5) { (try? inner.metric("weir_reverse_tunnels_open", ["pipeline": "published"])) == 0 })
        try publicSide.start()
        #expect(eventually(timeout: 10) { (try? inner.metric("weir_reverse_tunnels_open", ["pipeline": "published"])) == 1 }, "tunnel dialed again")
        let again = try ProxyListenerTests.curl([url])
        #expect(again.status == 0 && again.body == web.content, "\(again)")
        #expect((try inner.metric("weir_reverse_tunnel_failures_total", ["pipeline": "published"]) ?? 0) >= 1)
    }

    @Test("A tunnel from an agent whose certificate does not verify carries nothing")
    func refusesAnUnverifiedInnerAgent() throws {
        let pki = try TestPKI()
        let rogueCA = try TestPKI()
        try rogueCA.issue("inner", dnsNames: ["inner.weir.test"])
        let service = try Backends.greeter("secret service\n")
        let port = freePort(), tunnelPort = freePort()
        let publicSide = try Self.publicAgent(port: port, tunnelPort: tunnelPort, pki: pki)
        try publicSide.start()
        defer { publicSide.stop() }
        let rogue = try Self.innerAgent(tunnelPort: tunnelPort, service: service.port, pki: rogueCA)
        try rogue.start()
        defer { rogue.stop() }
        #expect(eventually(timeout: 5) { (try? rogue.metric("weir_reverse_tunnels_open", ["pipeline": "published"])) == 1 })

        let client = try TCPClient(port: port)
        #expect(try client.receiveAll().isEmpty, "the client gets nothing through an unverified tunnel")
        #expect(eventually(timeout: 5) { ((try? publicSide.metric("weir_pipeline_errors_total", ["pipeline": "publish", "stage": "transform.tls", "reason": "tls_failed"])) ?? 0) >= 1 })
        #expect((try rogue.metric("weir_pipeline_connections_total", ["pipeline": "published"]) ?? 0) == 0)
    }

    @Test("A flood of connections to the tunnel port holds at most max_idle_tunnels; once it stops, the inner agent's tunnel serves again")
    func tunnelPortFloodBounded() throws {
        let pki = try TestPKI()
        try pki.issue("inner", dnsNames: ["inner.weir.test"])
        let web = try ProxyListenerTests.WebServer()
        let port = freePort(), tunnelPort = freePort()
        let publicSide = try Self.publicAgent(port: port, tunnelPort: tunnelPort, pki: pki, maxIdleTunnels: 16)
        try publicSide.start()
        defer { publicSide.stop() }
        let inner = try Self.innerAgent(tunnelPort: tunnelPort, service: web.port, pki: pki)
        try inner.start()
        defer { inner.stop() }
        #expect(eventually(timeout: 5) { (try? inner.metric("weir_reverse_tunnels_open", ["pipeline": "published"])) == 1 })
        let baseline = openDescriptors(pid: publicSide.pid)

        // 300 connections that say nothing: the public agent keeps the newest 16 and closes the rest (the
        // inner agent's tunnel among them; it dials again).
        var flood = try (0..<300).map { _ in try TCPClient(port: tunnelPort) }
        #expect(eventually(timeout: 5) { openDescriptors(pid: publicSide.pid) <= baseline + 16 }, "\(openDescriptors(pid: publicSide.pid)), baseline \(baseline)")
        usleep(500_000)
        #expect(openDescriptors(pid: publicSide.pid) <= baseline + 16, "\(openDescriptors(pid: publicSide.pid)), baseline \(baseline)")
        for client in flood.prefix(250) { #expect((try? client.receiveAll())?.isEmpty ?? true, "the oldest are closed") }
        #expect((try inner.metric("weir_reverse_tunnel_failures_total", ["pipeline": "published"]) ?? 0) >= 1, "the inner agent's tunnel was closed")

        // The flood stops: its connections close, and the tunnel the inner agent dialed again serves.
        for client in flood { client.resetOnClose() }
        flood.removeAll()
        var fetched: (status: Int32, body: String, connectCode: Int) = (-1, "", 0)
        #expect(eventually(timeout: 10) {
            fetched = (try? ProxyListenerTests.curl(["http://127.0.0.1:\(port)/file.txt"])) ?? (-1, "", 0)
            return fetched.status == 0 && fetched.body == web.content
        }, "\(fetched)")
        #expect(eventually(timeout: 5) { openDescriptors(pid: publicSide.pid) <= baseline + 4 }, "\(openDescriptors(pid: publicSide.pid)), baseline \(baseline)")
    }

    @Test("A tunnel that never answers the TLS handshake is given up after handshake_timeout, and the next connection takes the inner agent's tunnel")
    func silentTunnelGivenUp() throws {
        let pki = try TestPKI()
        try pki.issue("inner", dnsNames: ["inner.weir.test"])
        let web = try ProxyListenerTests.WebServer()
        let port = freePort(), tunnelPort = freePort()
        // The carrier's keepalive as shipped (15 s): without a handshake deadline the silent tunnel held the
        // connection until two pings went unanswered.
        let publicSide = try Self.publicAgent(port: port, tunnelPort: tunnelPort, pki: pki, handshakeTimeout: "2s", keepalive: "15s")
        try publicSide.start()
        defer { publicSide.stop() }
        // Something that is not an inner agent dials in first: its connection is the oldest waiting tunnel.
        let silent = try TCPClient(port: tunnelPort)
        usleep(200_000)
        let inner = try Self.innerAgent(tunnelPort: tunnelPort, service: web.port, pki: pki)
        try inner.start()
        defer { inner.stop() }
        #expect(eventually(timeout: 5) { (try? inner.metric("weir_reverse_tunnels_open", ["pipeline": "published"])) == 1 })

        let url = "http://127.0.0.1:\(port)/file.txt"
        let started = Date()
        let first = try ProxyListenerTests.curl([url])
        let waited = Date().timeIntervalSince(started)
        #expect(first.status != 0, "the connection given the silent tunnel fails: \(first)")
        #expect(waited >= 1.5 && waited < 8, "after handshake_timeout (2 s), not the carrier keepalive's 30 s: \(waited) s")
        #expect(try publicSide.metric("weir_pipeline_errors_total", ["pipeline": "publish", "stage": "transform.tls", "reason": "handshake_timeout"]) == 1)
        #expect((try? silent.receiveUntilClosed())?.first == 0x16, "the silent connection got a ClientHello, then was closed")
        let second = try ProxyListenerTests.curl([url])
        #expect(second.status == 0 && second.body == web.content, "\(second)")
    }
}
