import Foundation
import Testing

/// What port scanners, health checks and broken or stalled clients do to every listener, and what the agent
/// holds for them: connections closed during their opening, openings and idle connections bounded in time,
/// open connections bounded in number, and running out of descriptors survived.
@Suite("Hostile clients: openings, timeouts and limits", .serialized)
struct HostileClientTests {
    static let tlsExample = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("plugins/transforms/tls/example").path

    /// One pipeline per negotiating listener and accept-side transform, each on its own port, with
    /// `options` added to the stage that has the opening.
    static func openingPipelines(ports: [String: Int], backend: Int, options: String = "") -> String {
        let example = tlsExample
        return """
            pipelines:
              socks:
                stages:
                  - {type: listen.socks5, address: "127.0.0.1:\(ports["socks"]!)"\(options)}
                  - {type: connect.tcp}
              http:
                stages:
                  - {type: listen.http, address: "127.0.0.1:\(ports["http"]!)"\(options)}
                  - {type: connect.tcp}
              sni:
                stages:
                  - {type: listen.tls_sni, address: "127.0.0.1:\(ports["sni"]!)", routes: {"a.example": "127.0.0.1:\(backend)"}\(options)}
                  - {type: connect.tcp}
              aead:
                stages:
                  - {type: listen.tcp, address: "127.0.0.1:\(ports["aead"]!)"}
                  - {type: transform.aead, side: server, password: secret\(options)}
                  - {type: connect.tcp}
              ws:
                stages:
                  - {type: listen.tcp, address: "127.0.0.1:\(ports["ws"]!)"}
                  - {type: transform.websocket, side: server\(options)}
                  - {type: connect.tcp, addresses: ["127.0.0.1:\(backend)"]}
              tls:
                stages:
                  - {type: listen.tcp, address: "127.0.0.1:\(ports["tls"]!)"}
                  - {type: transform.tls, side: server, certificate: \(example)/exit.pem, key: \(example)/exit.key\(options)}
                  - {type: connect.tcp, addresses: ["127.0.0.1:\(backend)"]}

            """
    }

    /// What each kind of client sends before it gives up: nothing, a byte, part of its opening.
    static let partialOpenings: [String: [[UInt8]]] = [
        "socks": [[], [5], [5, 1, 0], [5, 1, 0, 5, 1, 0]],
        "http": [[], Array("CONNECT a.example:80 HTTP/1.1\r\nHost: a".utf8)],
        "sni": [[], [0x16, 3, 1], [0x16, 3, 1, 0, 200, 1, 0]],
        "aead": [[], Array(repeating: 7, count: 20), Array(repeating: 7, count: 40)],
        "ws": [[], Array("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websock".utf8)],
        "tls": [[], [0x16, 3, 1, 0, 200, 1]],
    ]

    /// Sockets of the agent in CLOSE-WAIT (its peer closed, it did not) on the given local ports, from /proc.
    static func closeWait(ports: Set<Int>) -> Int {
        var count = 0
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let lines = ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n").dropFirst()
            for line in lines {
                let fields = line.split(separator: " ")
                guard fields.count > 3, fields[3] == "08", let port = fields[1].split(separator: ":").last.flatMap({ Int($0, radix: 16) }) else { continue }
                if ports.contains(port) { count += 1 }
            }
        }
        return count
    }

    static func ports() -> [String: Int] {
        Dictionary(uniqueKeysWithValues: ["socks", "http", "sni", "aead", "ws", "tls"].map { ($0, freePort()) })
    }

    @Test("Clients that close during their opening are closed at once on every negotiating listener and accept-side transform")
    func earlyCloseDuringOpening() throws {
        let backend = try Backends.echo()
        let ports = Self.ports()
        let agent = try WeirProcess(pipelines: Self.openingPipelines(ports: ports, backend: backend.port))
        try agent.start()
        defer { agent.stop() }
        let baseline = openDescriptors(pid: agent.pid)
        // Each partial opening, 20 times over (a scanner's worth), closed by the client.
        for _ in 0..<20 {
            for (name, openings) in Self.partialOpenings {
                for opening in openings {
                    let client = try TCPClient(port: ports[name]!)
                    if !opening.isEmpty { try client.send(opening) }
                    client.shutdownWrite()
                }
            }
        }
        #expect(eventually(timeout: 5) { Self.closeWait(ports: Set(ports.values)) == 0 }, "sockets left in CLOSE-WAIT: \(Self.closeWait(ports: Set(ports.values)))")
        #expect(eventually(timeout: 5) { openDescriptors(pid: agent.pid) <= baseline + 2 }, "descriptors \(openDescriptors(pid: agent.pid)), baseline \(baseline)")
        let exposition = try agent.metrics()
        for (name, stage) in ["socks": "listen.socks5", "http": "listen.http", "sni": "listen.tls_sni", "aead": "transform.aead", "ws": "transform.websocket", "tls": "transform.tls"] {
            let closed = value(in: exposition, "weir_pipeline_errors_total", ["pipeline": name, "stage": stage, "reason": "closed_during_handshake"]) ?? 0
            #expect(closed >= 20, "\(name): \(closed)")
            #expect(try agent.metric("weir_pipeline_connections_active", ["pipeline": name]) ?? 0 == 0)
        }
        // The listeners still serve: a complete SOCKS5 opening is forwarded.
        let client = try TCPClient(port: ports["socks"]!)
        try client.send([5, 1, 0])
        #expect(try client.receive(exactly: 2) == [5, 0])
        try client.send([5, 1, 0, 1, 127, 0, 0, 1, UInt8(backend.port >> 8), UInt8(backend.port & 0xff)])
        #expect(try client.receive(exactly: 10).prefix(2) == [5, 0])
        try client.send("ping")
        #expect(try client.receive(exactly: 4) == Array("ping".utf8))
    }

    @Test("A client that sends nothing, or half its opening, is closed at handshake_timeout; one that completes in time is served")
    func handshakeTimeout() throws {
        let backend = try Backends.echo()
        let ports = Self.ports()
        let agent = try WeirProcess(pipelines: Self.openingPipelines(ports: ports, backend: backend.port, options: ", handshake_timeout: 1s"))
        try agent.start()
        defer { agent.stop() }
        var stalled: [(String, TCPClient)] = []
        for (name, openings) in Self.partialOpenings {
            for opening in openings {
                let client = try TCPClient(port: ports[name]!, timeout: 6)
                if !opening.isEmpty { try client.send(opening) }
                stalled.append((name, client))
            }
        }
        // A SOCKS5 client that pauses within the timeout before its request.
        let slow = try TCPClient(port: ports["socks"]!)
        try slow.send([5, 1, 0])
        #expect(try slow.receive(exactly: 2) == [5, 0])
        usleep(500_000)
        try slow.send([5, 1, 0, 1, 127, 0, 0, 1, UInt8(backend.port >> 8), UInt8(backend.port & 0xff)])
        #expect(try slow.receive(exactly: 10).prefix(2) == [5, 0])

        let started = Date()
        for (name, client) in stalled {
            // The agent closes: end of stream (possibly after an answer it sent, e.g. SOCKS5's method choice).
            var ended = false
            while let chunk = try? client.receive(), !chunk.isEmpty {}
            ended = true
            #expect(ended, "\(name)")
        }
        let waited = Date().timeIntervalSince(started)
        #expect(waited < 4, "every stalled opening closed about 1 s after it began: \(waited) s")
        // Forwarding connections are not openings: the slow client still echoes after the timeout.
        try slow.send("late")
        #expect(try slow.receive(exactly: 4) == Array("late".utf8))
        let exposition = try agent.metrics()
        for (name, stage) in ["socks": "listen.socks5", "http": "listen.http", "sni": "listen.tls_sni", "aead": "transform.aead", "ws": "transform.websocket", "tls": "transform.tls"] {
            let timedOut = value(in: exposition, "weir_pipeline_errors_total", ["pipeline": name, "stage": stage, "reason": "handshake_timeout"]) ?? 0
            #expect(timedOut == Double(Self.partialOpenings[name]!.count), "\(name): \(timedOut)")
        }
    }

    @Test("idle_timeout closes a forward on which nothing moved, never one that carries bytes")
    func idleTimeout() throws {
        let backend = try Backends.echo()
        let port = freePort()
        let agent = try WeirProcess(pipelines: """
            pipelines:
              idle:
                stages:
                  - {type: listen.tcp, address: "127.0.0.1:\(port)", idle_timeout: 1s}
                  - {type: connect.tcp, addresses: ["127.0.0.1:\(backend.port)"]}
            """)
        try agent.start()
        defer { agent.stop() }
        let busy = try TCPClient(port: port, timeout: 5)
        let quiet = try TCPClient(port: port, timeout: 5)
        try quiet.send("x")
        #expect(try quiet.receive(exactly: 1) == Array("x".utf8))
        let started = Date()
        for _ in 0..<8 {
            try busy.send("b")
            #expect(try busy.receive(exactly: 1) == Array("b".utf8), "a connection that carries bytes stays")
            usleep(300_000)
        }
        #expect(try quiet.receive().isEmpty, "the quiet one was closed")
        #expect(Date().timeIntervalSince(started) < 3)
        #expect(try agent.metric("weir_pipeline_errors_total", ["pipeline": "idle", "stage": "listen.tcp", "reason": "idle_timeout"]) == 1)
    }

    @Test("max_connections: at the limit the listener stops accepting until a connection ends; the agent's limit spans listeners")
    func connectionLimits() throws {
        let backend = try Backends.echo()
        let (a, b) = (freePort(), freePort())
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  a:
                    stages:
                      - {type: listen.tcp, address: "127.0.0.1:\(a)", max_connections: 3}
                      - {type: connect.tcp, addresses: ["127.0.0.1:\(backend.port)"]}
                  b:
                    stages:
                      - {type: listen.tcp, address: "127.0.0.1:\(b)"}
                      - {type: connect.tcp, addresses: ["127.0.0.1:\(backend.port)"]}
                """, agentOptions: ["max_connections: 5"])
        try agent.start()
        defer { agent.stop() }

        func echoes(_ client: TCPClient, timeout: TimeInterval) -> Bool {
            client.setTimeout(timeout)
            guard (try? client.send("e")) != nil else { return false }
            return (try? client.receive(exactly: 1)) == Array("e".utf8)
        }
        let first = try (0..<3).map { _ in try TCPClient(port: a) }
        #expect(first.allSatisfy { echoes($0, timeout: 5) })
        // The fourth waits in the backlog: connected by the kernel, not served.
        let waiting = try TCPClient(port: a)
        #expect(!echoes(waiting, timeout: 1), "served beyond max_connections")
        #expect(try agent.metric("weir_pipeline_connections_active", ["pipeline": "a"]) == 3)
        #expect(try agent.metric("weir_pipeline_errors_total", ["pipeline": "a", "stage": "listen.tcp", "reason": "connection_limit"]) ?? 0 >= 1)
        #expect(agent.log.contains("connection limit reached"))
        // One ends: the waiting client is served (its byte was kept), and the others never noticed.
        first[0].shutdownWrite()
        _ = try? first[0].receive()
        waiting.setTimeout(5)
        #expect((try? waiting.receive(exactly: 1)) == Array("e".utf8), "served once a place was free")
        #expect(first[1...].allSatisfy { echoes($0, timeout: 5) })

        // The agent's limit (5) spans both listeners: a holds 3, so b gets 2 and the third waits.
        let onB = try (0..<2).map { _ in try TCPClient(port: b) }
        #expect(onB.allSatisfy { echoes($0, timeout: 5) })
        let waitingOnB = try TCPClient(port: b)
        #expect(!echoes(waitingOnB, timeout: 1), "served beyond the agent's max_connections")
        onB[0].shutdownWrite()
        _ = try? onB[0].receive()
        waitingOnB.setTimeout(5)
        #expect((try? waitingOnB.receive(exactly: 1)) == Array("e".utf8))
    }

    @Test("Out of descriptors (EMFILE): accepting pauses instead of spinning, is logged once, and resumes; open connections are untouched")
    func descriptorExhaustion() throws {
        let backend = try Backends.echo()
        let (forward, socks) = (freePort(), freePort())
        // A hard limit of 64 descriptors, which the agent cannot raise. SOCKS5 clients that send nothing hold
        // one descriptor each until their (long) handshake timeout, so they use up the rest deterministically.
        let agent = try WeirProcess(
            pipelines: tcpForward("forward", port: forward, to: [backend.port]) + """
                  socks:
                    stages:
                      - {type: listen.socks5, address: "127.0.0.1:\(socks)", handshake_timeout: 60s}
                      - {type: connect.tcp}
                """, launcher: ["prlimit", "--nofile=64:64", "--"])
        try agent.start()
        defer { agent.stop() }
        #expect(agent.log.contains("max_descriptors=64"), "\(agent.log)")
        let forwarded = try (0..<3).map { _ in try TCPClient(port: forward, timeout: 5) }
        for client in forwarded {
            try client.send("e")
            #expect(try client.receive(exactly: 1) == Array("e".utf8))
        }
        var stalled = try (0..<70).map { _ in try TCPClient(port: socks, timeout: 5) }
        #expect(eventually(timeout: 5) { openDescriptors(pid: agent.pid) >= 63 }, "descriptors: \(openDescriptors(pid: agent.pid))")
        // Out of descriptors with clients waiting in the backlog: the agent does not spin.
        let cpuBefore = cpuSeconds(pid: agent.pid)
        usleep(2_000_000)
        let cpu = cpuSeconds(pid: agent.pid) - cpuBefore
        #expect(cpu < 0.3, "CPU seconds over 2 s while out of descriptors: \(cpu)")
        #expect(agent.log.components(separatedBy: "accepting failed").count - 1 == 1, "logged once per episode:\n\(agent.log)")
        // Forwarded connections are untouched.
        for client in forwarded {
            try client.send("u")
            #expect(try client.receive(exactly: 1) == Array("u".utf8))
        }
        // Clients leave: accepting resumes by itself, and a new client is served.
        stalled.removeFirst(40)
        #expect(eventually(timeout: 10) {
            guard let client = try? TCPClient(port: socks, timeout: 2), (try? client.send([5, 1, 0])) != nil else { return false }
            return (try? client.receive(exactly: 2)) == [5, 0]
        }, "accepting resumed")
        #expect(agent.log.contains("accepting again"))
        #expect((try agent.metric("weir_pipeline_errors_total", ["pipeline": "socks", "stage": "listen.socks5", "reason": "accept_failed"]) ?? 0) >= 1)
        _ = stalled
    }
}

/// User plus system CPU time of a process, in seconds.
func cpuSeconds(pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let end = stat.lastIndex(of: ")") else { return 0 }
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    // utime and stime are fields 14 and 15 of stat; here counted after the command, so 12 and 13 (0-based 11, 12).
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}
