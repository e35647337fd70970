import Foundation
import Testing

/// transform.websocket against Python's `websockets` (client and server), through nginx as a reverse proxy, and
/// composed with TLS and AEAD between two agents. Everything stays on loopback.
@Suite("transform.websocket with Python websockets, nginx and the full composition", .serialized)
struct TransformWebSocketTests {
    static let hasWebsockets = (try? command([python3, "-c", "import websockets"]))?.status == 0

    /// Sends a binary message of random bytes and a text message through a WebSocket server, expecting them echoed
    /// (as bytes: weir carries a byte stream). Prints "ok" or what went wrong; a refused handshake prints its status.
    static let pythonClient = """
        import asyncio, os, sys, websockets
        async def main(url):
            try:
                async with websockets.connect(url, max_size=None) as ws:
                    payload = os.urandom(300000)
                    await ws.send(payload)
                    got = b""
                    while len(got) < len(payload):
                        got += await ws.recv()
                    assert got == payload, "binary echo differs"
                    await ws.send("hello weir")
                    got = await ws.recv()
                    assert got == b"hello weir", got
                    print("ok")
            except websockets.exceptions.InvalidStatusCode as e:
                print("status", e.status_code)
        asyncio.run(main(sys.argv[1]))
        """

    /// A WebSocket echo server on the given port and path (other paths are refused with 404).
    static let pythonServer = """
        import asyncio, sys, websockets
        port, path = int(sys.argv[1]), sys.argv[2]
        async def echo(ws, request_path):
            if request_path != path:
                return
            async for message in ws:
                await ws.send(message)
        async def check(request_path, headers):
            if request_path != path:
                return (404, [], b"")
        async def main():
            async with websockets.serve(echo, "127.0.0.1", port, process_request=check, max_size=None):
                await asyncio.Future()
        asyncio.run(main())
        """

    static func agent(_ yaml: String) throws -> WeirProcess {
        let agent = try WeirProcess(pipelines: yaml)
        try agent.start()
        return agent
    }

    @Test("Python's websockets client completes the handshake with the server side; bytes and text are echoed; a wrong path gets 404",
          .enabled(if: hasWebsockets, "needs python3-websockets installed"))
    func pythonClientAgainstServerSide() throws {
        let echo = try Backends.echo()
        let port = freePort()
        let agent = try Self.agent("""
            pipelines:
              ws-in:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(port)
                  - type: transform.websocket
                    side: server
                    path: /tunnel
                  - type: connect.tcp
                    addresses: [127.0.0.1:\(echo.port)]
            """)
        defer { agent.stop() }
        let (_, good) = try command([python3, "-c", Self.pythonClient, "ws://127.0.0.1:\(port)/tunnel"])
        #expect(good.trimmingCharacters(in: .whitespacesAndNewlines) == "ok", "\(good)\n\(agent.log.suffix(2000))")
        let (_, wrongPath) = try command([python3, "-c", Self.pythonClient, "ws://127.0.0.1:\(port)/elsewhere"])
        #expect(wrongPath.trimmingCharacters(in: .whitespacesAndNewlines) == "status 404", "\(wrongPath)")
    }

    @Test("The client side upgrades to Python's websockets server and the stream is echoed byte-exact",
          .enabled(if: hasWebsockets, "needs python3-websockets installed"))
    func clientSideAgainstPythonServer() throws {
        let serverPort = freePort(), port = freePort()
        let server = Process()
        server.executableURL = URL(fileURLWithPath: python3)
        server.arguments = ["-c", Self.pythonServer, "\(serverPort)", "/echo"]
        server.standardOutput = FileHandle.nullDevice
        server.standardError = FileHandle.nullDevice
        try server.run()
        defer { server.stopHelper() }
        #expect(eventually { (try? TCPClient(port: serverPort)) != nil })
        let agent = try Self.agent("""
            pipelines:
              ws-out:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(port)
                  - type: transform.websocket
                    side: client
                    host: echo.weir.test
                    path: /echo
                  - type: connect.tcp
                    addresses: [127.0.0.1:\(serverPort)]
            """)
        defer { agent.stop() }
        var random = ByteStream(seed: 7)
        let payload = random.next(1 << 20)
        let client = try TCPClient(port: port)
        Thread { try? client.send(payload) }.start()
        let received = try client.receive(exactly: payload.count)
        let exact = received == payload  // compared outside #expect, which would print and diff megabytes
        #expect(exact, "received \(received.count) of \(payload.count) bytes")
    }

    /// Entry (plain TCP in, `client` transforms) and exit (`server` transforms, out to `backend`); `middle` is
    /// the port the entry dials (the exit's, or a proxy in front of it).
    static func relay(entry: Int, exit: Int, middle: Int, backend: Int, entryStages: String, exitStages: String) -> String {
        """
        pipelines:
          entry:
            stages:
              - type: listen.tcp
                address: 127.0.0.1:\(entry)
        \(entryStages.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
              - type: connect.tcp
                addresses: [127.0.0.1:\(middle)]
          exit:
            stages:
              - type: listen.tcp
                address: 127.0.0.1:\(exit)
        \(exitStages.split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
              - type: connect.tcp
                addresses: [127.0.0.1:\(backend)]
        """
    }

    @Test("Two agents through nginx as an ordinary HTTP reverse proxy: the upgrade passes, 1 MiB each way byte-exact",
          .enabled(if: which("nginx") != nil, "needs nginx installed"))
    func throughNginx() throws {
        let echo = try Backends.echo()
        let entry = freePort(), exit = freePort(), proxy = freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-nginx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let conf = """
            daemon off;
            worker_processes 1;
            pid \(directory.path)/nginx.pid;
            error_log \(directory.path)/error.log;
            events { worker_connections 64; }
            http {
                access_log off;
                client_body_temp_path \(directory.path);
                proxy_temp_path \(directory.path);
                fastcgi_temp_path \(directory.path);
                uwsgi_temp_path \(directory.path);
                scgi_temp_path \(directory.path);
                server {
                    listen 127.0.0.1:\(proxy);
                    location /tunnel {
                        proxy_pass http://127.0.0.1:\(exit);
                        proxy_http_version 1.1;
                        proxy_set_header Upgrade $http_upgrade;
                        proxy_set_header Connection "upgrade";
                        proxy_set_header Host $host;
                    }
                    location / { return 404; }
                }
            }
            """
        try conf.write(to: directory.appendingPathComponent("nginx.conf"), atomically: true, encoding: .utf8)
        let nginx = Process()
        nginx.executableURL = URL(fileURLWithPath: which("nginx")!)
        nginx.arguments = ["-c", directory.appendingPathComponent("nginx.conf").path, "-e", directory.appendingPathComponent("error.log").path]
        nginx.standardOutput = FileHandle.nullDevice
        nginx.standardError = FileHandle.nullDevice
        try nginx.run()
        defer { nginx.stopHelper() }
        #expect(eventually { (try? TCPClient(port: proxy)) != nil })

        let agent = try Self.agent(Self.relay(
            entry: entry, exit: exit, middle: proxy, backend: echo.port,
            entryStages: "- type: transform.websocket\n  side: client\n  host: relay.weir.test\n  path: /tunnel",
            exitStages: "- type: transform.websocket\n  side: server\n  path: /tunnel"))
        defer { agent.stop() }
        let mismatch = try echoMismatch(port: entry, size: 1 << 20, seed: 11)
        #expect(mismatch == nil, "\(mismatch ?? "")\n\(agent.log.suffix(2000))")
    }

    @Test("aead inside websocket inside tls between two agents: 64 MiB each way byte-exact, half-close passed through every layer",
          .enabled(if: which("openssl") != nil, "needs openssl installed"))
    func fullComposition() throws {
        let pki = try TestPKI()
        try pki.issue("exit", dnsNames: ["exit.weir.test"])
        let echo = try Backends.echo()
        let entry = freePort(), exit = freePort()
        let agent = try Self.agent(Self.relay(
            entry: entry, exit: exit, middle: exit, backend: echo.port,
            entryStages: """
                - type: transform.aead
                  side: client
                  password: composed secret
                  target: 127.0.0.1:\(echo.port)
                - type: transform.websocket
                  side: client
                  host: exit.weir.test
                  path: /t
                - type: transform.tls
                  side: client
                  ca: \(pki.caPath)
                  server_name: exit.weir.test
                """,
            exitStages: """
                - type: transform.tls
                  side: server
                  certificate: \(pki.path("exit.pem"))
                  key: \(pki.path("exit.key"))
                - type: transform.websocket
                  side: server
                  path: /t
                - type: transform.aead
                  side: server
                  password: composed secret
                """
        ).replacingOccurrences(of: "addresses: [127.0.0.1:\(echo.port)]", with: ""))
        defer { agent.stop() }
        let mismatch = try echoMismatch(port: entry, size: 64 << 20, seed: 64)
        #expect(mismatch == nil, "\(mismatch ?? "")\n\(agent.log.suffix(2000))")
    }
}
