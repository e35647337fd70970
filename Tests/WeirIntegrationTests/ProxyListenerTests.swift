import Foundation
import Testing

/// listen.socks5, listen.http and listen.tls_sni against curl, the client most people use, through the real binary to
/// local web servers (python3 http.server, plain and TLS). Everything stays on loopback.
@Suite(
    "Proxy listeners (SOCKS5, HTTP CONNECT, TLS SNI) with curl", .serialized,
    .enabled(if: which("curl") != nil, "needs curl installed"))
struct ProxyListenerTests {
    /// A web server on 127.0.0.1 serving one file with known content.
    final class WebServer: @unchecked Sendable {
        let port = freePort()
        let content = "weir proxy test \(UUID().uuidString)\n"
        private let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-web-\(UUID().uuidString)")
        private let process = Process()

        init() throws {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try content.write(to: directory.appendingPathComponent("file.txt"), atomically: true, encoding: .utf8)
            process.executableURL = URL(fileURLWithPath: python3)
            process.arguments = ["-m", "http.server", "--bind", "127.0.0.1", "--directory", directory.path, "\(port)"]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            _ = eventually(timeout: 5) { (try? command([which("curl")!, "-sf", "http://127.0.0.1:\(port)/file.txt"]))?.status == 0 }
        }

        deinit {
            process.stopHelper()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    static func agent(_ listener: String, options: String = "") throws -> (WeirProcess, Int) {
        let port = freePort()
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  proxy:
                    stages:
                      - type: \(listener)
                        address: 127.0.0.1:\(port)
                \(options.split(separator: "\n").map { "        " + $0 }.joined(separator: "\n"))
                      - type: connect.tcp
                        connect_timeout: 2s
                """)
        try agent.start()
        return (agent, port)
    }

    /// curl's exit status, body, and the proxy's CONNECT status (0 when it gave none).
    static func curl(_ arguments: [String]) throws -> (status: Int32, body: String, connectCode: Int) {
        let (status, output) = try command([which("curl")!, "-s", "--max-time", "10", "-w", "\n%{http_connect}"] + arguments)
        guard let newline = output.lastIndex(of: "\n") else { return (status, "", Int(output) ?? 0) }
        return (status, String(output[..<newline]), Int(output[output.index(after: newline)...]) ?? 0)
    }

    // MARK: - SOCKS5

    @Test("curl --socks5-hostname and --socks5 reach the web server through listen.socks5")
    func socks5WithoutAuthentication() throws {
        let web = try WebServer()
        let (agent, port) = try Self.agent("listen.socks5")
        defer { agent.stop() }
        let byName = try Self.curl(["--socks5-hostname", "127.0.0.1:\(port)", "http://localhost:\(web.port)/file.txt"])
        #expect(byName.status == 0 && byName.body == web.content, "\(byName)")
        let byAddress = try Self.curl(["--socks5", "127.0.0.1:\(port)", "http://127.0.0.1:\(web.port)/file.txt"])
        #expect(byAddress.status == 0 && byAddress.body == web.content, "\(byAddress)")
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "proxy"]) == 2)
        // Per destination, by the name the client asked for (not what it resolved to).
        #expect(try agent.metric("weir_destination_connections_total", ["pipeline": "proxy", "destination": "localhost"]) == 1)
        #expect(try agent.metric("weir_destination_connections_total", ["pipeline": "proxy", "destination": "127.0.0.1"]) == 1)
        #expect((try agent.metric("weir_destination_bytes_total", ["pipeline": "proxy", "destination": "localhost", "direction": "out"]) ?? 0) > 0)
    }

    /// A SOCKS5 client for many destinations: an echo server on 0.0.0.0 (every 127.x.y.z reaches it), one
    /// connection of 100,000 bytes each way to 127.0.0.2, then one short connection to each of COUNT other
    /// loopback addresses. Prints the bytes sent.
    static let manyDestinationsClient = #"""
        import socket, struct, sys, threading
        proxy, echo_port, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", echo_port))
        server.listen(1024)
        def echo(connection):
            while True:
                data = connection.recv(65536)
                if not data:
                    break
                connection.sendall(data)
            connection.close()
        def serve():
            while True:
                connection, _ = server.accept()
                threading.Thread(target=echo, args=(connection,), daemon=True).start()
        threading.Thread(target=serve, daemon=True).start()
        def receive(s, n):
            data = b""
            while len(data) < n:
                chunk = s.recv(n - len(data))
                assert chunk, "closed early"
                data += chunk
            return data
        def one(address, size):
            s = socket.create_connection(("127.0.0.1", proxy), timeout=10)
            s.sendall(b"\x05\x01\x00")
            assert receive(s, 2) == b"\x05\x00"
            s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(address) + struct.pack(">H", echo_port))
            assert receive(s, 10)[1] == 0, "refused"
            s.sendall(b"x" * size)
            receive(s, size)
            s.close()
            return size
        total = one("127.0.0.2", 100000)
        for i in range(count):
            total += one("127.1.%d.%d" % (i >> 8, i & 255), 10 + i % 50)
        print(total)
        """#

    @Test("10,000 distinct SOCKS5 destinations: weir_destination_bytes_total has the top 100 and other, the busiest counted exactly, and all of them add up to the pipeline's bytes and connections")
    func destinationsCapped() throws {
        let (agent, port) = try Self.agent("listen.socks5")
        defer { agent.stop() }
        let count = 10_000
        let (status, output) = try command([python3, "-c", Self.manyDestinationsClient, "\(port)", "\(freePort())", "\(count)"])
        #expect(status == 0, "\(output)")
        let sent = Double(output.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        #expect(eventually(timeout: 10) { (try? agent.metric("weir_pipeline_connections_active", ["pipeline": "proxy"])) == 0 })
        let exposition = try agent.metrics()
        let lines = exposition.split(separator: "\n").filter { $0.hasPrefix("weir_destination_bytes_total{pipeline=\"proxy\"") }
        #expect(lines.count == 2 * 101, "100 destinations and other, both directions: \(lines.count)")
        #expect(value(in: exposition, "weir_destination_bytes_total", ["pipeline": "proxy", "destination": "127.0.0.2", "direction": "in"]) == 100_000)
        #expect(value(in: exposition, "weir_destination_bytes_total", ["pipeline": "proxy", "destination": "127.0.0.2", "direction": "out"]) == 100_000)
        func total(_ name: String, _ labels: String) -> Double {
            exposition.split(separator: "\n").filter { $0.hasPrefix(name + "{pipeline=\"proxy\"") && (labels.isEmpty || $0.contains(labels)) }
                .compactMap { Double($0.split(separator: " ").last!) }.reduce(0, +)
        }
        #expect(total("weir_destination_bytes_total", "direction=\"in\"") == sent)
        #expect(total("weir_destination_bytes_total", "direction=\"in\"") == value(in: exposition, "weir_pipeline_bytes_total", ["pipeline": "proxy", "direction": "in"]))
        #expect(total("weir_destination_bytes_total", "direction=\"out\"") == value(in: exposition, "weir_pipeline_bytes_total", ["pipeline": "proxy", "direction": "out"]))
        #expect(total("weir_destination_connections_total", "") == Double(count + 1))
        #expect(value(in: exposition, "weir_pipeline_connections_total", ["pipeline": "proxy"]) == Double(count + 1))
        let (checked, report) = try promtoolCheck(exposition)
        #expect(checked == 0, "promtool: \(report)")
    }

    @Test("SOCKS5 clients that send greeting, credentials, request and data in one segment (optimistic clients) are answered at once, with and without authentication")
    func socks5OneSegment() throws {
        let backend = try Backends.echo()
        let port = UInt8(backend.port >> 8), low = UInt8(backend.port & 0xff)
        let request: [UInt8] = [5, 1, 0, 1, 127, 0, 0, 1, port, low]
        for (options, opening, answer) in [
            ("", [5, 1, 0] + request, [5, 0]),
            ("users:\n  alice: secret", [5, 1, 2] + [1, 5] + Array("alice".utf8) + [6] + Array("secret".utf8) + request, [5, 2, 1, 0]),
        ] as [(String, [UInt8], [UInt8])] {
            let (agent, listener) = try Self.agent("listen.socks5", options: options)
            defer { agent.stop() }
            // Long before the handshake timeout (10 s): an opening parsed only when more bytes come would wait for it.
            let client = try TCPClient(port: listener, timeout: 3)
            try client.send(opening + Array("ping".utf8))
            #expect(try client.receive(exactly: answer.count) == answer, "\(options)")
            #expect(try client.receive(exactly: 10).prefix(2) == [5, 0], "\(options)")
            #expect(try client.receive(exactly: 4) == Array("ping".utf8), "\(options)")
        }
    }

    @Test("SOCKS5 username/password: the right credentials pass, wrong ones and none are refused")
    func socks5Authentication() throws {
        let web = try WebServer()
        let (agent, port) = try Self.agent("listen.socks5", options: "users:\n  alice: \"open sesame\"")
        defer { agent.stop() }
        let url = "http://127.0.0.1:\(web.port)/file.txt"
        let good = try Self.curl(["--socks5-hostname", "alice:open%20sesame@127.0.0.1:\(port)", url])
        #expect(good.status == 0 && good.body == web.content, "\(good)")
        let wrong = try Self.curl(["--socks5-hostname", "alice:guess@127.0.0.1:\(port)", url])
        #expect(wrong.status != 0 && !wrong.body.contains(web.content), "\(wrong)")
        let none = try Self.curl(["--socks5-hostname", "127.0.0.1:\(port)", url])
        #expect(none.status != 0 && !none.body.contains(web.content), "\(none)")
        #expect((try agent.metric("weir_pipeline_errors_total", ["pipeline": "proxy", "reason": "negotiation_failed"]) ?? 0) >= 2)
    }

    @Test("SOCKS5: a destination the policy denies and a name that does not resolve are refused")
    func socks5Refusals() throws {
        let web = try WebServer()
        let (agent, port) = try Self.agent("listen.socks5", options: "destinations:\n  deny: [127.0.0.2/32, blocked.example]")
        defer { agent.stop() }
        let denied = try Self.curl(["--socks5", "127.0.0.1:\(port)", "http://127.0.0.2:\(web.port)/file.txt"])
        #expect(denied.status != 0, "\(denied)")
        let deniedName = try Self.curl(["--socks5-hostname", "127.0.0.1:\(port)", "http://www.blocked.example:\(web.port)/"])
        #expect(deniedName.status != 0, "\(deniedName)")
        let unknown = try Self.curl(["--socks5-hostname", "127.0.0.1:\(port)", "http://no-such-host.invalid:\(web.port)/"])
        #expect(unknown.status != 0, "\(unknown)")
        // The proxy still serves allowed destinations.
        let allowed = try Self.curl(["--socks5-hostname", "127.0.0.1:\(port)", "http://127.0.0.1:\(web.port)/file.txt"])
        #expect(allowed.status == 0 && allowed.body == web.content, "\(allowed)")
    }

    /// A SOCKS5 UDP client (no library needed): asks for an association over TCP, then sends each `datagram`
    /// (destination port, text) through the relay and prints what came back, one JSON line per datagram;
    /// finally closes the TCP connection and checks the relay is gone.
    static let socks5UDPClient = """
        import json, socket, struct, sys
        proxy, sends = int(sys.argv[1]), json.loads(sys.argv[2])
        tcp = socket.create_connection(("127.0.0.1", proxy), 5)
        tcp.sendall(b"\\x05\\x01\\x00")
        assert tcp.recv(2) == b"\\x05\\x00"
        tcp.sendall(b"\\x05\\x03\\x00\\x01" + socket.inet_aton("0.0.0.0") + struct.pack(">H", 0))
        reply = tcp.recv(10)
        assert reply[1] == 0, "reply %d" % reply[1]
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack(">H", reply[8:10])[0])
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(1)
        def through(host, port, text):
            udp.sendto(b"\\x00\\x00\\x00\\x01" + socket.inet_aton(host) + struct.pack(">H", port) + text.encode(), relay)
            try:
                data, _ = udp.recvfrom(65536)
            except socket.timeout:
                return None
            source = "%s:%d" % (socket.inet_ntoa(data[4:8]), struct.unpack(">H", data[8:10])[0])
            return {"from": source, "data": data[10:].decode(), "header": data[:4].hex()}
        for host, port, text in sends:
            print(json.dumps(through(host, port, text)))
        tcp.close()
        import time; time.sleep(0.5)
        print(json.dumps(through(sends[0][0], sends[0][1], "after close")))
        """

    @Test("SOCKS5 UDP ASSOCIATE relays datagrams both ways, applies the destination policy, and ends with its TCP connection")
    func socks5UDPAssociate() throws {
        let echo = try UDPEchoServer()
        let (agent, port) = try Self.agent("listen.socks5", options: "destinations:\n  deny: [127.0.0.2/32]")
        defer { agent.stop() }
        let sends = "[[\"127.0.0.1\", \(echo.port), \"hello udp\"], [\"127.0.0.1\", \(echo.port), \"second\"], [\"127.0.0.2\", \(echo.port), \"denied\"]]"
        let (status, output) = try command([python3, "-c", Self.socks5UDPClient, "\(port)", sends])
        let lines = output.split(separator: "\n").map(String.init)
        #expect(status == 0 && lines.count == 4, "\(output)\n\(agent.log.suffix(1500))")
        guard lines.count == 4 else { return }
        #expect(lines[0] == #"{"from": "127.0.0.1:\#(echo.port)", "data": "hello udp", "header": "00000001"}"#)
        #expect(lines[1] == #"{"from": "127.0.0.1:\#(echo.port)", "data": "second", "header": "00000001"}"#)
        #expect(lines[2] == "null", "a denied destination gets nothing")
        #expect(lines[3] == "null", "the association ended with its TCP connection")
        #expect((try agent.metric("weir_pipeline_errors_total", ["pipeline": "proxy", "reason": "negotiation_failed"]) ?? 0) == 0)
        // "hello udp" and "second" went out and came back (the denied datagram and the one after the close did not).
        #expect(try agent.metric("weir_pipeline_bytes_total", ["pipeline": "proxy", "direction": "in"]) == 15)
        #expect(try agent.metric("weir_pipeline_bytes_total", ["pipeline": "proxy", "direction": "out"]) == 15)
    }

    // MARK: - HTTP CONNECT

    @Test("curl --proxy http:// --proxytunnel reaches the web server through listen.http")
    func httpConnect() throws {
        let web = try WebServer()
        let (agent, port) = try Self.agent("listen.http")
        defer { agent.stop() }
        let result = try Self.curl(["--proxy", "http://127.0.0.1:\(port)", "--proxytunnel", "http://127.0.0.1:\(web.port)/file.txt"])
        #expect(result.status == 0 && result.body == web.content && result.connectCode == 200, "\(result)")
        // A plain proxy request (GET http://…) is not a tunnel: 405.
        let (_, plain) = try command([which("curl")!, "-s", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "--proxy", "http://127.0.0.1:\(port)", "http://127.0.0.1:\(web.port)/file.txt"])
        #expect(plain == "405")
    }

    @Test("HTTP CONNECT basic auth: 407 without or with wrong credentials, tunnel with the right ones")
    func httpConnectAuthentication() throws {
        let web = try WebServer()
        let (agent, port) = try Self.agent("listen.http", options: "users:\n  bob: s3cret")
        defer { agent.stop() }
        let url = "http://127.0.0.1:\(web.port)/file.txt"
        let none = try Self.curl(["--proxy", "http://127.0.0.1:\(port)", "--proxytunnel", url])
        #expect(none.connectCode == 407 && !none.body.contains(web.content), "\(none)")
        let wrong = try Self.curl(["--proxy", "http://127.0.0.1:\(port)", "--proxy-user", "bob:guess", "--proxytunnel", url])
        #expect(wrong.connectCode == 407, "\(wrong)")
        let good = try Self.curl(["--proxy", "http://127.0.0.1:\(port)", "--proxy-user", "bob:s3cret", "--proxytunnel", url])
        #expect(good.status == 0 && good.body == web.content && good.connectCode == 200, "\(good)")
    }

    @Test("HTTP CONNECT: 403 for a denied destination, 502 for one that does not answer or resolve")
    func httpConnectRefusals() throws {
        let web = try WebServer()
        let (agent, port) = try Self.agent("listen.http", options: "destinations:\n  allow: [127.0.0.1/32, localhost]")
        defer { agent.stop() }
        let proxy = ["--proxy", "http://127.0.0.1:\(port)", "--proxytunnel"]
        #expect(try Self.curl(proxy + ["http://127.0.0.2:\(web.port)/"]).connectCode == 403)
        #expect(try Self.curl(proxy + ["http://127.0.0.1:\(freePort())/"]).connectCode == 502)
        let byName = try Self.curl(proxy + ["http://localhost:\(web.port)/file.txt"])
        #expect(byName.status == 0 && byName.body == web.content, "\(byName)")
    }

    // MARK: - TLS SNI

    /// An HTTPS server on 127.0.0.1 with a self-signed certificate for `name`, answering every GET with `name`.
    final class TLSServer: @unchecked Sendable {
        let port = freePort()
        private let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-tls-\(UUID().uuidString)")
        private let process = Process()

        static let script = """
            import http.server, ssl, sys
            port, cert, key, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
            class Handler(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    body = name.encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                def log_message(self, *args):
                    pass
            server = http.server.HTTPServer(("127.0.0.1", port), Handler)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            server.serve_forever()
            """

        init(name: String) throws {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let cert = directory.appendingPathComponent("cert.pem").path, key = directory.appendingPathComponent("key.pem").path
            let (status, output) = try command([
                which("openssl")!, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                "-subj", "/CN=\(name)", "-addext", "subjectAltName=DNS:\(name)", "-keyout", key, "-out", cert,
            ])
            guard status == 0 else { throw CommandFailed(command: "openssl req", status: status, output: output) }
            process.executableURL = URL(fileURLWithPath: python3)
            process.arguments = ["-c", Self.script, "\(port)", cert, key, name]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            _ = eventually(timeout: 5) { (try? command([which("curl")!, "-skf", "https://127.0.0.1:\(port)/"]))?.status == 0 }
        }

        deinit {
            process.stopHelper()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    @Test(
        "listen.tls_sni routes two server names to two TLS backends without terminating TLS; unknown names use the default",
        .enabled(if: which("openssl") != nil, "needs openssl installed"))
    func tlsSNIRouting() throws {
        let a = try TLSServer(name: "a.weir.test")
        let b = try TLSServer(name: "b.weir.test")
        let fallback = try TLSServer(name: "default.weir.test")
        let (agent, port) = try Self.agent(
            "listen.tls_sni",
            options: "routes:\n  a.weir.test: 127.0.0.1:\(a.port)\n  \"*.b.weir.test\": 127.0.0.1:\(b.port)\n  b.weir.test: 127.0.0.1:\(b.port)\ndefault: 127.0.0.1:\(fallback.port)")
        defer { agent.stop() }
        func get(_ name: String) throws -> String {
            // The certificate is the backend's own: verified against it, so TLS was not terminated by weir.
            try Self.curl(["--resolve", "\(name):\(port):127.0.0.1", "-k", "https://\(name):\(port)/"]).body
        }
        #expect(try get("a.weir.test") == "a.weir.test")
        #expect(try get("b.weir.test") == "b.weir.test")
        #expect(try get("x.b.weir.test") == "b.weir.test")
        #expect(try get("other.weir.test") == "default.weir.test")
        let (status, subject) = try command([
            which("curl")!, "-sv", "-k", "--max-time", "10", "--resolve", "a.weir.test:\(port):127.0.0.1", "https://a.weir.test:\(port)/",
        ])
        #expect(status == 0 && subject.contains("subject: CN=a.weir.test"), "the backend's certificate reaches the client")
    }

    @Test("listen.tls_sni without a default closes connections whose name has no route", .enabled(if: which("openssl") != nil, "needs openssl installed"))
    func tlsSNIWithoutRoute() throws {
        let a = try TLSServer(name: "a.weir.test")
        let (agent, port) = try Self.agent("listen.tls_sni", options: "routes:\n  a.weir.test: 127.0.0.1:\(a.port)")
        defer { agent.stop() }
        let unknown = try Self.curl(["--resolve", "z.weir.test:\(port):127.0.0.1", "-k", "https://z.weir.test:\(port)/"])
        #expect(unknown.status != 0, "\(unknown)")
        let known = try Self.curl(["--resolve", "a.weir.test:\(port):127.0.0.1", "-k", "https://a.weir.test:\(port)/"])
        #expect(known.body == "a.weir.test", "\(known)")
        #expect((try agent.metric("weir_pipeline_errors_total", ["pipeline": "proxy", "reason": "negotiation_failed"]) ?? 0) >= 1)
    }
}
