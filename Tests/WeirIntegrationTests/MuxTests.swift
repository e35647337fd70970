import Foundation
import Testing

/// transform.mux between two agents: client connections as HTTP/2 streams of one TLS carrier through
/// connect.relay. All on loopback.
@Suite(
    "Multiplexed relay (transform.mux over tls)", .serialized,
    .enabled(if: which("openssl") != nil, "needs openssl installed"))
struct MuxTests {
    static func exitAgent(port: Int, socksPort: Int, pki: TestPKI) throws -> WeirProcess {
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
                    path: /mux
                  - type: transform.mux
                    side: server
                  - type: transform.aead
                    side: server
                    cipher: chacha20-ietf-poly1305
                    password: mux secret
                  - type: connect.tcp
              socks-exit:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(socksPort)
                  - type: transform.tls
                    side: server
                    certificate: \(pki.path("exit.pem"))
                    key: \(pki.path("exit.key"))
                  - type: transform.mux
                    side: server
                  - type: connect.tcp
            """)
    }

    /// `entry` sends every connection to the echo service through aead streams over a websocket-in-tls
    /// carrier; `socks` carries SOCKS5 clients' destinations in the stream requests.
    static func entryAgent(port: Int, socksPort: Int, exit: Int, socksExit: Int, service: Int, pki: TestPKI) throws -> WeirProcess {
        try WeirProcess(pipelines: """
            pipelines:
              entry:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(port)
                  - type: transform.aead
                    side: client
                    cipher: chacha20-ietf-poly1305
                    password: mux secret
                    target: 127.0.0.1:\(service)
                  - type: transform.mux
                    side: client
                    keepalive: 1s
                  - type: transform.websocket
                    side: client
                    host: exit.weir.test
                    path: /mux
                  - type: transform.tls
                    side: client
                    ca: \(pki.caPath)
                    server_name: exit.weir.test
                  - type: connect.relay
                    peers: [127.0.0.1:\(exit)]
                    connect_timeout: 2s
              socks:
                stages:
                  - type: listen.socks5
                    address: 127.0.0.1:\(socksPort)
                  - type: transform.mux
                    side: client
                  - type: transform.tls
                    side: client
                    ca: \(pki.caPath)
                    server_name: exit.weir.test
                  - type: connect.relay
                    peers: [127.0.0.1:\(socksExit)]
            """)
    }

    /// Both agents running, and the echo service behind the exit.
    struct Agents {
        let pki: TestPKI, service: TCPListener, exit: WeirProcess, entry: WeirProcess
        let exitPort = freePort(), socksExitPort = freePort(), entryPort = freePort(), socksPort = freePort()

        init() throws {
            pki = try TestPKI()
            try pki.issue("exit", dnsNames: ["exit.weir.test"])
            service = try Backends.echo()
            exit = try MuxTests.exitAgent(port: exitPort, socksPort: socksExitPort, pki: pki)
            entry = try MuxTests.entryAgent(
                port: entryPort, socksPort: socksPort, exit: exitPort, socksExit: socksExitPort, service: service.port, pki: pki)
            try exit.start()
            try entry.start()
        }

        func stop() {
            entry.stop()
            exit.stop()
        }
    }

    /// Established TCP connections whose remote port is `port`, from the kernel's table (IPv4 loopback).
    static func establishedConnections(toPort port: Int) throws -> Int {
        // procfs files have no size, so they are read to their end rather than by length.
        let file = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/proc/net/tcp"))
        defer { try? file.close() }
        let table = String(decoding: try file.readToEnd() ?? Data(), as: UTF8.self)
        return table.split(separator: "\n").dropFirst().filter { line in
            let fields = line.split(separator: " ")
            guard fields.count > 3, let remotePort = fields[2].split(separator: ":").last else { return false }
            return Int(remotePort, radix: 16) == port && fields[3] == "01"
        }.count
    }

    @Test("200 concurrent connections share one carrier; 64 MiB byte-exact; pings measure the peer; SOCKS5 destinations travel in the stream")
    func manyConnectionsOneCarrier() throws {
        let agents = try Agents()
        defer { agents.stop() }
        let (exit, entry, exitPort, entryPort) = (agents.exit, agents.entry, agents.exitPort, agents.entryPort)

        // 200 clients connect and send before any of them reads, so all 200 are open at once.
        var clients: [TCPClient] = []
        var payloads: [[UInt8]] = []
        for index in 0..<200 {
            var random = ByteStream(seed: UInt64(100 + index))
            let payload = random.next(16 << 10)
            let client = try TCPClient(port: entryPort)
            try client.send(payload)
            clients.append(client)
            payloads.append(payload)
        }
        var mismatched: [Int] = []
        for (index, client) in clients.enumerated() where try client.receive(exactly: payloads[index].count) != payloads[index] {
            mismatched.append(index)
        }
        #expect(mismatched.isEmpty, "connections whose echo differed: \(mismatched)")
        let carriers = try Self.establishedConnections(toPort: exitPort)
        #expect(carriers == 1, "one TCP connection from entry to exit, not \(carriers)")
        #expect(try exit.metric("weir_pipeline_connections_active", ["pipeline": "exit"]) == 200)
        #expect(try exit.metric("weir_pipeline_connections_total", ["pipeline": "exit"]) == 200)
        for client in clients { client.shutdownWrite() }
        for client in clients { #expect(try client.receiveAll().isEmpty, "half-close reaches the service and its end comes back") }
        clients.removeAll()
        #expect(eventually(timeout: 5) { (try? exit.metric("weir_pipeline_connections_active", ["pipeline": "exit"])) == 0 })

        // A bulk transfer through one stream: flow control and half-close, on the same carrier.
        #expect(try echoMismatch(port: entryPort, size: 64 << 20, seed: 7) == nil, "64 MiB each way byte-exact")
        #expect(try Self.establishedConnections(toPort: exitPort) == 1)

        // Pings: with no new connection the latency of the peer still changes (the relay's own TCP_INFO
        // sampling runs every 15 s, later than this).
        let peer = ["pipeline": "entry", "peer": "127.0.0.1:\(exitPort)"]
        let first = try #require(try entry.metric("weir_relay_latency_seconds", peer))
        #expect(eventually(timeout: 5) { (try? entry.metric("weir_relay_latency_seconds", peer)).map { $0 != first && $0 > 0 && $0 < 0.5 } ?? false })

        // SOCKS5 clients name the destination; it travels in the stream's request to the exit.
        let web = try ProxyListenerTests.WebServer()
        for _ in 0..<3 {
            let fetched = try ProxyListenerTests.curl(["--socks5-hostname", "127.0.0.1:\(agents.socksPort)", "http://localhost:\(web.port)/file.txt"])
            #expect(fetched.status == 0 && fetched.body == web.content, "\(fetched)")
        }
        #expect(try Self.establishedConnections(toPort: agents.socksExitPort) == 1, "three requests, one carrier")
        #expect(try exit.metric("weir_pipeline_connections_total", ["pipeline": "socks-exit"]) == 3)
    }

    @Test("After the exit restarts, the next connection dials a new carrier")
    func carrierRecovers() throws {
        let agents = try Agents()
        defer { agents.stop() }
        let (exit, entry, exitPort, entryPort) = (agents.exit, agents.entry, agents.exitPort, agents.entryPort)
        #expect(try echoMismatch(port: entryPort, size: 1 << 20, seed: 1) == nil)

        exit.signal(SIGKILL)
        _ = exit.waitForExit(timeout: 5)
        try exit.start()
        #expect(eventually(timeout: 10) { (try? echoMismatch(port: entryPort, size: 4096, seed: 2)) == .some(nil) }, "served through a new carrier")
        #expect(try Self.establishedConnections(toPort: exitPort) == 1)
        #expect(try exit.metric("weir_pipeline_errors_total", ["pipeline": "exit", "stage": "transform.mux", "reason": "mux_failed"]) == nil)
    }
}
