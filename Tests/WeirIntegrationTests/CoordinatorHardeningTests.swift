import Foundation
import Testing

/// The coordinator's port faces every agent of a fleet, often the internet: clients that connect and say
/// nothing, stall in the TLS handshake or send half a request must not hold its descriptors. All on loopback.
@Suite(
    "Coordinator under hostile clients", .serialized,
    .enabled(if: which("openssl") != nil && which("curl") != nil, "needs openssl and curl installed"))
struct CoordinatorHardeningTests {
    /// argv: port raw hello heads keep. Opens `keep` TLS connections that make one request and stay open
    /// (keep-alive), `heads` that complete the handshake and send half a request head, `raw` that send
    /// nothing and `hello` that send half a ClientHello; prints "ready". Per stdin line "status": how many of
    /// each group the server has closed ("closed raw hello heads keep").
    static let stalledClients = ConnectionHerd.raiseLimit + """

        import select, socket, ssl, sys  # poll, not select(): the descriptors pass 1024
        port, counts = int(sys.argv[1]), [int(n) for n in sys.argv[2:6]]
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        def tls():
            return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
        keep = []
        for _ in range(counts[3]):
            s = tls()
            s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
            answer = b""
            while not answer.endswith(b"\\r\\n\\r\\nok\\n"):
                answer += s.recv(4096)
            keep.append(s)
        heads = []
        for _ in range(counts[2]):
            s = tls()
            s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: loc")
            heads.append(s)
        raw = [socket.create_connection(("127.0.0.1", port)) for _ in range(counts[0])]
        hello = []
        for _ in range(counts[1]):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"\\x16\\x03\\x01\\x00\\xc8\\x01\\x00")
            hello.append(s)
        print("ready", flush=True)
        def closed(group):
            # Nothing more is sent to any of them: readable means the server's end (EOF or reset) arrived.
            poll = select.poll()
            for s in group:
                poll.register(s, select.POLLIN)
            return len(poll.poll(0))
        for line in sys.stdin:
            if line.strip() == "status":
                print("closed %d %d %d %d" % tuple(closed(g) for g in (raw, hello, heads, keep)), flush=True)
        """

    @Test("connections that stall in their opening are closed at handshake_timeout, idle keep-alive ones at idle_timeout; agents stay connected; past descriptor 1024")
    func stalledOpeningsClosed() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki, settings: ["handshake_timeout: 2s", "idle_timeout: 4s"])
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken()
        let agent = try CoordinatorTests.managedAgent("steady", coordinator: coordinator, token: token, labels: [:])
        defer { agent.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("steady"))??["online"] as? Bool == true })
        #expect(coordinator.log.contains("max_descriptors="), "the coordinator says its descriptor limit")
        let baseline = openDescriptors(pid: coordinator.pid)

        let (raw, hello, heads, keep) = (1_100, 100, 100, 30)
        signal(SIGPIPE, SIG_IGN)
        let (clients, input, output) = try ConnectionHerd.python(Self.stalledClients, ["\(coordinator.port)", "\(raw)", "\(hello)", "\(heads)", "\(keep)"], netns: nil)
        defer { clients.stopHelper() }
        #expect(try output.line(timeout: 60) == "ready")
        var held = 0
        #expect(eventually(timeout: 1.5) { held = openDescriptors(pid: coordinator.pid); return held > 1_024 && held > baseline + raw },
                "the stalled connections are held for now, past descriptor 1024: \(held), baseline \(baseline)")
        // Meanwhile the API answers.
        #expect(try coordinator.request("GET", "/healthz", token: nil).0 == 200)
        func status() throws -> [Int] {
            try input.write(contentsOf: Data("status\n".utf8))
            return try output.line(timeout: 10).split(separator: " ").dropFirst().compactMap { Int($0) }
        }
        var closed: [Int] = []
        #expect(eventually(timeout: 6) { closed = (try? status()) ?? []; return closed.prefix(3) == [raw, hello, heads] },
                "every stalled opening closed after handshake_timeout (2 s): \(closed) of \([raw, hello, heads])")
        #expect(eventually(timeout: 8) { closed = (try? status()) ?? []; return closed.last == keep },
                "idle keep-alive connections closed after idle_timeout (4 s): \(closed.last ?? -1) of \(keep)")
        #expect(try coordinator.metric("weir_coordinator_connection_errors_total", ["reason": "handshake_timeout"]) == Double(raw + hello + heads))
        #expect(eventually(timeout: 5) { openDescriptors(pid: coordinator.pid) <= baseline + 2 }, "descriptors \(openDescriptors(pid: coordinator.pid)), baseline \(baseline)")
        #expect(eventually(timeout: 5) { (try? coordinator.metric("weir_coordinator_connections_open")) == 2 }, "the agent's connection and the scrape's")

        // The agent's WebSocket outlived both timeouts without reconnecting, and still gets what is pushed.
        #expect(try coordinator.metric("weir_coordinator_connected_agents") == 1)
        #expect(!agent.log.contains("dialing again"), "\(agent.log.suffix(1500))")
        let port = freePort(), echo = try Backends.echo()
        try coordinator.admin("PUT", "/api/v1/pipelines/pushed", yaml: CoordinatorTests.forward("pushed", port: port, to: echo.port))
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "pushed", "agent": "steady"])
        #expect(eventually(timeout: 5) { CoordinatorTests.echoes(port) })
    }

    @Test("at max_connections the coordinator stops accepting until a connection closes: new clients wait in the backlog, then are served")
    func connectionLimit() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki, settings: ["handshake_timeout: 2s", "max_connections: 50"])
        try coordinator.start()
        defer { coordinator.stop() }
        #expect(coordinator.log.contains("max_connections=50"))
        let baseline = openDescriptors(pid: coordinator.pid)
        signal(SIGPIPE, SIG_IGN)
        let (clients, input, output) = try ConnectionHerd.python(Self.stalledClients, ["\(coordinator.port)", "80", "0", "0", "0"], netns: nil)
        defer { clients.stopHelper() }
        #expect(try output.line(timeout: 30) == "ready")
        #expect(eventually(timeout: 2) { openDescriptors(pid: coordinator.pid) >= baseline + 50 })
        usleep(300_000)
        // The server stops asking for more at the limit; the accept already asked for may bring a batch (4).
        #expect(openDescriptors(pid: coordinator.pid) <= baseline + 50 + 4, "no more than 50 accepted: \(openDescriptors(pid: coordinator.pid)), baseline \(baseline)")
        // A real client waits in the backlog until the stalled ones time out, then is answered.
        let started = Date()
        #expect(try coordinator.request("GET", "/healthz", token: nil).0 == 200)
        #expect(Date().timeIntervalSince(started) >= 0.5, "it had to wait for room")
        #expect(eventually(timeout: 8) {
            try? input.write(contentsOf: Data("status\n".utf8))
            return (try? output.line(timeout: 5)) == "closed 80 0 0 0"
        }, "the 30 that waited were accepted, then closed at their own handshake_timeout")
        #expect(eventually(timeout: 5) { (try? coordinator.metric("weir_coordinator_connection_errors_total", ["reason": "handshake_timeout"])) == 80 })
    }
}
