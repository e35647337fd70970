import Foundation
import Testing

/// transform.aead against shadowsocks-libev (ss-local and ss-server from Debian), all three ciphers, both
/// directions, byte-exact; and weir on both ends. curl drives the traffic through SOCKS5 to a local web
/// server that serves a random file and answers uploads with their SHA-256. Everything stays on loopback.
@Suite(
    "transform.aead interoperates with shadowsocks-libev", .serialized,
    .enabled(if: which("ss-server") != nil && which("ss-local") != nil && which("curl") != nil, "needs shadowsocks-libev and curl installed"))
struct ShadowsocksInteropTests {
    static let ciphers = ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]
    static let password = "weir shared secret"

    /// GET /data: 4 MiB of random bytes (the same for the server's lifetime); POST: the SHA-256 of the body.
    final class DataServer: @unchecked Sendable {
        let port = freePort()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("weir-ss-\(UUID().uuidString).bin")
        private let process = Process()

        static let script = """
            import hashlib, http.server, sys
            port, path = int(sys.argv[1]), sys.argv[2]
            data = open(path, "rb").read()
            class Handler(http.server.BaseHTTPRequestHandler):
                def do_GET(self):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                def do_POST(self):
                    body = self.rfile.read(int(self.headers["Content-Length"]))
                    answer = hashlib.sha256(body).hexdigest().encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                def log_message(self, *args):
                    pass
            http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
            """

        init() throws {
            var bytes = [UInt8](repeating: 0, count: 4 << 20)
            for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255) }
            try Data(bytes).write(to: file)
            process.executableURL = URL(fileURLWithPath: python3)
            process.arguments = ["-c", Self.script, "\(port)", file.path]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            _ = eventually(timeout: 5) { (try? command([which("curl")!, "-sf", "-o", "/dev/null", "http://127.0.0.1:\(port)/data"]))?.status == 0 }
        }

        deinit {
            process.stopHelper()
            try? FileManager.default.removeItem(at: file)
        }

        var sha256: String { (try? command([which("sha256sum")!, file.path]).output.prefix(64)).map(String.init) ?? "" }
    }

    /// A shadowsocks-libev process for the test.
    final class Shadowsocks: @unchecked Sendable {
        private let process = Process()

        init(_ tool: String, _ arguments: [String]) throws {
            process.executableURL = URL(fileURLWithPath: which(tool)!)
            process.arguments = arguments
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
        }

        deinit { process.stopHelper() }
    }

    /// Downloads /data and uploads the same bytes through the SOCKS5 proxy at `socks`; both must arrive intact.
    static func expectByteExact(through socks: Int, _ server: DataServer, _ what: String) throws {
        let download = FileManager.default.temporaryDirectory.appendingPathComponent("weir-ss-dl-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: download) }
        let (status, output) = try command([
            which("curl")!, "-s", "--max-time", "30", "--socks5-hostname", "127.0.0.1:\(socks)", "-o", download.path,
            "http://localhost:\(server.port)/data",
        ])
        let downloaded = (try? command([which("sha256sum")!, download.path]).output.prefix(64)).map(String.init)
        #expect(status == 0 && downloaded == server.sha256, "\(what): download \(status) \(output)")
        let (uploadStatus, answer) = try command([
            which("curl")!, "-s", "--max-time", "30", "--socks5-hostname", "127.0.0.1:\(socks)", "--data-binary", "@\(server.file.path)",
            "-H", "Content-Type: application/octet-stream", "http://127.0.0.1:\(server.port)/upload",
        ])
        #expect(uploadStatus == 0 && answer == server.sha256, "\(what): upload \(uploadStatus) \(answer)")
    }

    /// A transform.aead stage, indented for the pipelines below.
    static func aead(_ side: String, _ cipher: String, password: String = password, target: String? = nil) -> String {
        let lines = ["- type: transform.aead", "  side: \(side)", "  cipher: \(cipher)", "  password: \"\(password)\""]
            + (target.map { ["  target: \($0)"] } ?? [])
        return lines.map { "      " + $0 }.joined(separator: "\n")
    }

    static func waitForPort(_ port: Int) {
        _ = eventually(timeout: 5) { (try? TCPClient(port: port)) != nil }
    }

    @Test("ss-local -> weir (transform.aead side: server) -> web server, every cipher, both directions", arguments: ciphers)
    func ssLocalToWeir(_ cipher: String) throws {
        let web = try DataServer()
        let weirPort = freePort(), socks = freePort()
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  exit:
                    stages:
                      - type: listen.tcp
                        address: 127.0.0.1:\(weirPort)
                \(Self.aead("server", cipher))
                      - type: connect.tcp
                """)
        try agent.start()
        defer { agent.stop() }
        let local = try Shadowsocks("ss-local", ["-s", "127.0.0.1", "-p", "\(weirPort)", "-l", "\(socks)", "-k", Self.password, "-m", cipher])
        Self.waitForPort(socks)
        try Self.expectByteExact(through: socks, web, "ss-local -> weir, \(cipher)")
        // The exit counts per destination as named in the AEAD address header: the download by name, the upload by address.
        #expect(try agent.metric("weir_destination_connections_total", ["pipeline": "exit", "destination": "localhost"]) == 1)
        #expect(try agent.metric("weir_destination_connections_total", ["pipeline": "exit", "destination": "127.0.0.1"]) == 1)
        #expect((try agent.metric("weir_destination_bytes_total", ["pipeline": "exit", "destination": "localhost", "direction": "out"]) ?? 0) >= Double(4 << 20))
        withExtendedLifetime(local) {}
    }

    @Test("weir (listen.socks5 + transform.aead side: client) -> ss-server -> web server, every cipher, both directions", arguments: ciphers)
    func weirToSSServer(_ cipher: String) throws {
        let web = try DataServer()
        let ssPort = freePort(), socks = freePort()
        let server = try Shadowsocks("ss-server", ["-s", "127.0.0.1", "-p", "\(ssPort)", "-k", Self.password, "-m", cipher])
        Self.waitForPort(ssPort)
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  entry:
                    stages:
                      - type: listen.socks5
                        address: 127.0.0.1:\(socks)
                \(Self.aead("client", cipher))
                      - type: connect.tcp
                        addresses: [127.0.0.1:\(ssPort)]
                """)
        try agent.start()
        defer { agent.stop() }
        try Self.expectByteExact(through: socks, web, "weir -> ss-server, \(cipher)")
        withExtendedLifetime(server) {}
    }

    @Test("weir entry -> weir exit over transform.aead, with a fixed target on the entry", arguments: ["aes-128-gcm"])
    func weirToWeir(_ cipher: String) throws {
        let web = try DataServer()
        let exitPort = freePort(), socks = freePort(), plain = freePort()
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  entry:
                    stages:
                      - type: listen.socks5
                        address: 127.0.0.1:\(socks)
                \(Self.aead("client", cipher))
                      - type: connect.tcp
                        addresses: [127.0.0.1:\(exitPort)]
                  fixed:
                    stages:
                      - type: listen.tcp
                        address: 127.0.0.1:\(plain)
                \(Self.aead("client", cipher, target: "127.0.0.1:\(web.port)"))
                      - type: connect.tcp
                        addresses: [127.0.0.1:\(exitPort)]
                  exit:
                    stages:
                      - type: listen.tcp
                        address: 127.0.0.1:\(exitPort)
                \(Self.aead("server", cipher))
                      - type: connect.tcp
                """)
        try agent.start()
        defer { agent.stop() }
        try Self.expectByteExact(through: socks, web, "weir -> weir, \(cipher)")
        // A plain TCP entry with a fixed target: what the exit reads from the stream's header.
        let (status, body) = try command([which("curl")!, "-s", "--max-time", "30", "-o", "/dev/null", "-w", "%{size_download}", "http://127.0.0.1:\(plain)/data"])
        #expect(status == 0 && body == "\(4 << 20)")
    }

    @Test("A wrong password is refused: nothing reaches the target")
    func wrongPassword() throws {
        let web = try DataServer()
        let weirPort = freePort(), socks = freePort()
        let agent = try WeirProcess(
            pipelines: """
                pipelines:
                  exit:
                    stages:
                      - type: listen.tcp
                        address: 127.0.0.1:\(weirPort)
                \(Self.aead("server", "chacha20-ietf-poly1305", password: "right"))
                      - type: connect.tcp
                """)
        try agent.start()
        defer { agent.stop() }
        let local = try Shadowsocks("ss-local", ["-s", "127.0.0.1", "-p", "\(weirPort)", "-l", "\(socks)", "-k", "wrong", "-m", "chacha20-ietf-poly1305"])
        Self.waitForPort(socks)
        let (status, _) = try command([which("curl")!, "-s", "--max-time", "10", "--socks5-hostname", "127.0.0.1:\(socks)", "http://127.0.0.1:\(web.port)/data", "-o", "/dev/null"])
        #expect(status != 0)
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "exit"]).map { $0 >= 1 } == true)
        #expect((try agent.metric("weir_pipeline_bytes_total", ["pipeline": "exit", "direction": "in"]) ?? 0) == 0)
        #expect((try agent.metric("weir_pipeline_errors_total", ["pipeline": "exit", "stage": "transform.aead", "reason": "aead_failed"]) ?? 0) >= 1)
        withExtendedLifetime(local) {}
    }
}
