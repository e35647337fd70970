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
        // Each partial opening, 20 times over (a scanner's worth), closed by the client with a FIN and with a
        // reset (which, once the agent has answered part of the opening, is what a client's close turns into).
        for round in 0..<40 {
            for (name, openings) in Self.partialOpenings {
                for opening in openings {
                    let client = try TCPClient(port: ports[name]!)
                    if !opening.isEmpty { try client.send(opening) }
                    if round % 2 == 0 { client.shutdownWrite() } else { client.resetOnClose() }
                }
            }
        }
        #expect(eventually(timeout: 5) { Self.closeWait(ports: Set(ports.values)) == 0 }, "sockets left in CLOSE-WAIT: \(Self.closeWait(ports: Set(ports.values)))")
        #expect(eventually(timeout: 5) { openDescriptors(pid: agent.pid) <= baseline + 2 }, "descriptors \(openDescriptors(pid: agent.pid)), baseline \(baseline)")
        let exposition = try agent.metrics()
        for (name, stage) in ["socks": "listen.socks5", "http": "listen.http", "sni": "listen.tls_sni", "aead": "transform.aead", "ws": "transform.websocket", "tls": "transform.tls"] {
            // Clients that sent part of an opening left during it; those that sent nothing (the first opening of
            // each list) are health checks and connect scans, counted apart.
            let closed = value(in: exposition, "weir_pipeline_errors_total", ["pipeline": name, "stage": stage, "reason": "closed_during_handshake"]) ?? 0
            #expect(closed == Double(40 * (Self.partialOpenings[name]!.count - 1)), "\(name): \(closed)")
            let empty = value(in: exposition, "weir_pipeline_errors_total", ["pipeline": name, "stage": stage, "reason": "closed_without_data"]) ?? 0
            #expect(empty == 40, "\(name): \(empty)")
            let other = exposition.split(separator: "\n").filter {
                $0.hasPrefix("weir_pipeline_errors_total{pipeline=\"\(name)\"") && !$0.contains("closed_during_handshake") && !$0.contains("closed_without_data")
            }
            #expect(other.isEmpty, "\(name): every client that left is counted as having left: \(other)")
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

    @Test(
        "Plain forwards (the stream relay), unpaced and paced by limit.bandwidth: 600 clients mid-transfer (the agent past descriptor 1024) that reset or half-close and leave unread data; nothing is held afterwards",
        arguments: ["", "      - type: limit.bandwidth\n        rate: 1MiB/s\n"])
    func relayedClientsLeaveMidTransfer(extraStages: String) throws {
        let backend = try Backends.echo()
        let port = freePort()
        // Paced: past the 64 KiB burst each direction waits on its bucket while its client leaves.
        let agent = try WeirProcess(pipelines: tcpForward("plain", port: port, to: [backend.port], extraStages: extraStages))
        try agent.start()
        defer { agent.stop() }
        let baseline = openDescriptors(pid: agent.pid)
        var clients: [TCPClient] = []
        for index in 0..<600 {
            let client = try TCPClient(port: port)
            // 64 to 256 KiB each: bulk, so most directions splice and hold pipes when the clients stop reading.
            try client.send([UInt8](repeating: UInt8(index & 0xff), count: (64 << 10) * (1 + index % 4)))
            if index % 3 == 0 { #expect(try client.receive(exactly: 1000) == [UInt8](repeating: UInt8(index & 0xff), count: 1000)) }
            clients.append(client)
        }
        #expect(highestDescriptor(pid: agent.pid) > 1024)
        for (index, client) in clients.enumerated() {
            if index % 2 == 0 { client.resetOnClose() } else { client.shutdownWrite() }
        }
        clients.removeAll()
        #expect(eventually(timeout: 10) { openDescriptors(pid: agent.pid) <= baseline }, "descriptors \(openDescriptors(pid: agent.pid)), baseline \(baseline) (pipes: \(pipeDescriptors(pid: agent.pid)))")
        #expect(eventually(timeout: 5) { Self.closeWait(ports: [port]) == 0 })
        #expect(try agent.waitForMetric("weir_pipeline_connections_active", ["pipeline": "plain"]) { $0 == 0 } == 0)
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "plain"]) == 600)
        let client = try TCPClient(port: port)
        try client.send("ping")
        #expect(try client.receive(exactly: 4) == Array("ping".utf8))
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
        // Clients leave: accepting resumes by itself, and a new client is served. The stalled clients still in
        // the backlog are accepted first, so enough must leave to make room for them and one more: 50 of 70 leave
        // ample room whatever the agent's own descriptors (its loops, relay threads, a pooled pipe).
        stalled.removeFirst(50)
        #expect(eventually(timeout: 10) {
            guard let client = try? TCPClient(port: socks, timeout: 2), (try? client.send([5, 1, 0])) != nil else { return false }
            return (try? client.receive(exactly: 2)) == [5, 0]
        }, "accepting resumed")
        #expect(agent.log.contains("accepting again"))
        #expect((try agent.metric("weir_pipeline_errors_total", ["pipeline": "socks", "stage": "listen.socks5", "reason": "accept_failed"]) ?? 0) >= 1)
        _ = stalled
    }
    @Test("Out of descriptors, a burst of new UDP clients: every failed session is counted, the warning is not logged per client, the agent recovers")
    func datagramSessionsOutOfDescriptors() throws {
        let echo = try UDPEchoServer()
        let port = freePort()
        // 64 descriptors: a session is a socket of its own, so 150 new clients run the agent out of them.
        let agent = try WeirProcess(
            pipelines: udpForward("udp", port: port, to: [echo.port], connectOptions: "        idle_timeout: 2s"),
            launcher: ["prlimit", "--nofile=64:64", "--"])
        try agent.start()
        defer { agent.stop() }
        var clients = try (0..<150).map { _ in try UDPSocket(timeout: 1) }
        for client in clients { try client.send(Array("x".utf8), to: port) }
        let failed = { try agent.metric("weir_pipeline_errors_total", ["pipeline": "udp", "stage": "connect.udp", "reason": "connect_failed"]) ?? 0 }
        #expect(try eventually(timeout: 5) { try failed() >= 50 }, "failed sessions: \((try? failed()) ?? -1)")
        // The listener has a socket (and relay thread) per event loop, one loop per core; each warns once.
        let warnings = agent.log.components(separatedBy: "UDP session failed").count - 1
        #expect((1...ProcessInfo.processInfo.activeProcessorCount).contains(warnings), "one warning per listening socket for the burst, not one per client (\(warnings)):\n\(agent.log.suffix(2000))")
        // The sessions that were opened idle out and give their descriptors back: a new client is served.
        clients.removeAll()
        let late = try UDPSocket(timeout: 1)
        #expect(eventually(timeout: 10) { (try? late.echoed(Array("late".utf8), through: port, attempts: 1)) == true }, "served again")
    }

    /// argv: proxy-port echo-port held busy-from agent-pid. `held` SOCKS5 clients, each to a destination of
    /// its own (127.3.x.y, all reaching the echo server on 0.0.0.0:echo-port), opened one after the other and proven by an
    /// echo; prints {"held","descriptors","highest"} (the agent's). Then per stdin line: "early R" makes R
    /// rounds of clients that give up after each length of their opening (0 to 13 bytes, and after the
    /// answer), by FIN and by reset; "busy N" sends N bytes on the 20 connections from busy-from and one on
    /// every connection; "quit" closes all and prints {"sent"}. Errors are printed as {"error"}.
    static let destinationClients = ConnectionHerd.raiseLimit + #"""

        import asyncio, json, os, socket, struct, sys
        proxy, echo_port, held_count, busy_from, agent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        def destination(i):
            return "127.3.%d.%d" % (i >> 8, i & 255)
        def request(i):
            return b"\x05\x01\x00" + b"\x05\x01\x00\x01" + socket.inet_aton(destination(i)) + struct.pack(">H", echo_port)
        sent = 0
        async def opened(i):
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
            opening = request(i)
            writer.write(opening[:3])
            assert await reader.readexactly(2) == b"\x05\x00"
            writer.write(opening[3:])
            reply = await reader.readexactly(10)
            assert reply[1] == 0, "refused"
            return reader, writer
        async def roundtrip(connection, size):
            global sent
            reader, writer = connection
            writer.write(b"y" * size)
            sent += size
            await reader.readexactly(size)
        async def bounded(coroutines, limit=200):
            gate = asyncio.Semaphore(limit)
            async def one(c):
                async with gate:
                    return await c
            return await asyncio.gather(*(one(c) for c in coroutines))
        async def early(i, length, reset):
            # A client that gives up after `length` bytes of its opening (13: the whole request, before the reply;
            # 14: after the reply), with a FIN or a reset.
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy)
            opening = request(i)
            if length:
                writer.write(opening[:min(length, 13)])
                await writer.drain()
            if length == 14:
                answer = await reader.readexactly(12)
                assert answer[:2] == b"\x05\x00" and answer[3] == 0, answer
            if reset:
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            await asyncio.sleep(0)
        def descriptors():
            fds = [int(f) for f in os.listdir("/proc/%d/fd" % agent)]
            return len(fds), max(fds)
        async def main():
            # One after the other, so the first 20 destinations are the shown ones and the next 1,000 followed.
            held = [await opened(i) for i in range(held_count)]
            await bounded(roundtrip(c, 1 + i % 50) for i, c in enumerate(held))
            count, highest = descriptors()
            print(json.dumps({"held": len(held), "descriptors": count, "highest": highest}), flush=True)
            loop = asyncio.get_running_loop()
            stdin = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
            while True:
                command = (await stdin.readline()).decode().split()
                if not command or command[0] == "quit":
                    break
                if command[0] == "early":
                    rounds = int(command[1])
                    jobs = [early(held_count + n, length, reset) for n in range(rounds) for length in range(15) for reset in (False, True)]
                    await bounded(jobs, 100)
                    print(json.dumps({"early": len(jobs)}), flush=True)
                elif command[0] == "busy":
                    size = int(command[1])
                    await bounded(roundtrip(held[i], size) for i in range(busy_from, busy_from + 20))
                    await bounded(roundtrip(c, 1) for c in held)
                    print(json.dumps({"busy": size}), flush=True)
            for reader, writer in held:
                writer.close()
            print(json.dumps({"sent": sent}), flush=True)
        try:
            asyncio.run(main())
        except Exception as error:
            print(json.dumps({"error": repr(error)}), flush=True)
        """#

    @Test("Per-destination counting with 3,000 SOCKS5 connections open (the agent past descriptor 1024), a reload, and clients giving up at every byte of their opening: sums exact, the busiest promoted, nothing held afterwards")
    func destinationsUnderLoad() throws {
        let (port, echoPort, other) = (freePort(), freePort(), freePort())
        let pipelines = """
            pipelines:
              proxy:
                stages:
                  - {type: listen.socks5, address: "127.0.0.1:\(port)"}
                  - {type: connect.tcp}

            """
        let agent = try WeirProcess(pipelines: pipelines, metricsOptions: ["destinations_top: 20"])
        try agent.start()
        defer { agent.stop() }
        let baseline = openDescriptors(pid: agent.pid)
        let echo = try ConnectionHerd.echoServer(host: "0.0.0.0", port: echoPort)
        defer { echo.stopHelper() }
        let held = 3_000, busy = 500..<520
        let (clients, input, output) = try ConnectionHerd.python(
            Self.destinationClients, ["\(port)", "\(echoPort)", "\(held)", "\(busy.lowerBound)", "\(agent.pid)"], netns: nil)
        defer { clients.stopHelper() }
        func answer() throws -> [String: Any] {
            let line = try output.line(timeout: 180)
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
            if let error = object["error"] { throw HelperFailed("clients: \(error)") }
            return object
        }
        let opened = try answer()
        #expect(opened["held"] as? Int == held)
        #expect((opened["descriptors"] as? Int ?? 0) > 2 * held && (opened["highest"] as? Int ?? 0) > 1024, "\(opened)")

        // A reload (a pipeline added) while clients give up at every byte of their opening.
        try agent.writePipelines(pipelines + tcpForwardEntry("other", port: other, to: [echoPort]))
        try input.write(contentsOf: Data("early 20\n".utf8))
        try agent.reload()
        let early = try answer()["early"] as? Int ?? 0
        #expect(early == 20 * 15 * 2)

        // Destinations that were followed without series of their own move the most bytes: they are shown
        // after the next look (every 10 s), and count from then on.
        try input.write(contentsOf: Data("busy 100000\n".utf8))
        _ = try answer()
        let names = busy.map { "127.3.\($0 >> 8).\($0 & 255)" }
        #expect(eventually(timeout: 30) {
            let exposition = (try? agent.metrics()) ?? ""
            return names.allSatisfy { value(in: exposition, "weir_destination_bytes_total", ["pipeline": "proxy", "destination": $0, "direction": "in"]) != nil }
        }, "the 20 busiest destinations have series")
        try input.write(contentsOf: Data("busy 1000\n".utf8))
        _ = try answer()
        try input.write(contentsOf: Data("quit\n".utf8))
        let sent = Double(try answer()["sent"] as? Int ?? -1)

        #expect(eventually(timeout: 10) { (try? agent.metric("weir_pipeline_connections_active", ["pipeline": "proxy"])) == 0 })
        #expect(eventually(timeout: 5) { Self.closeWait(ports: [port]) == 0 }, "sockets left in CLOSE-WAIT: \(Self.closeWait(ports: [port]))")
        // The added pipeline's listener is one descriptor more.
        #expect(eventually(timeout: 5) { openDescriptors(pid: agent.pid) <= baseline + 3 }, "descriptors \(openDescriptors(pid: agent.pid)), baseline \(baseline)")
        let exposition = try agent.metrics()
        for name in names {
            let shown = value(in: exposition, "weir_destination_bytes_total", ["pipeline": "proxy", "destination": name, "direction": "in"]) ?? 0
            #expect(shown >= 1_001 && shown <= 101_100, "\(name): \(shown)")
        }
        func total(_ name: String, _ labels: String) -> Double {
            exposition.split(separator: "\n").filter { $0.hasPrefix(name + "{pipeline=\"proxy\"") && (labels.isEmpty || $0.contains(labels)) }
                .compactMap { Double($0.split(separator: " ").last!) }.reduce(0, +)
        }
        let series = exposition.split(separator: "\n").filter { $0.hasPrefix("weir_destination_bytes_total{pipeline=\"proxy\"") }
        #expect(series.count == 2 * 21, "20 destinations and other, both directions")
        for direction in ["in", "out"] {
            #expect(total("weir_destination_bytes_total", "direction=\"\(direction)\"") == sent, "\(direction)")
            #expect(value(in: exposition, "weir_pipeline_bytes_total", ["pipeline": "proxy", "direction": direction]) == sent, "\(direction)")
        }
        // Every held connection and every client that read its answer is counted; one that closed right after
        // its request may or may not have been connected.
        let connections = total("weir_destination_connections_total", "")
        #expect(connections >= Double(held + 20 * 2) && connections <= Double(held + 20 * 4), "\(connections)")
        let closed = ["closed_during_handshake", "closed_without_data"].map {
            value(in: exposition, "weir_pipeline_errors_total", ["pipeline": "proxy", "stage": "listen.socks5", "reason": $0]) ?? 0
        }.reduce(0, +)
        #expect(closed >= Double(20 * 2 * 13), "\(closed)")
        let (checked, report) = try promtoolCheck(exposition)
        #expect(checked == 0, "promtool: \(report)")
    }
}


