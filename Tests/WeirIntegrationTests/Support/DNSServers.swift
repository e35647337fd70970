import Foundation

/// DNS on loopback for the dns.filter tests: Debian's dnsmasq as an authoritative-only upstream (records
/// given on its command line, no other resolver asked), a "black hole" that takes queries and never answers,
/// and `dig` as the client.
let dnsTestsUnavailable: String? = {
    for tool in ["dnsmasq", "dig"] where which(tool) == nil { return "needs \(tool) installed (dnsmasq-base, bind9-dnsutils)" }
    return nil
}()

final class Dnsmasq {
    private(set) var port = 0
    private var process: BackgroundCommand?
    let directory: URL

    /// `records`: name → IPv4 address (A), TXT records as name → text.
    /// `extra`: more dnsmasq arguments (a second `--host-record` for a name gives it two addresses).
    /// A port taken between choosing and binding it (dnsmasq exits) is chosen again, up to three times.
    init(records: [String: String], txt: [String: [String]] = [:], extra: [String] = []) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-dnsmasq-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let errors = directory.appendingPathComponent("stderr").path
        for _ in 0..<3 {
            port = freeDualPort()
            let process = try BackgroundCommand([
                which("dnsmasq")!, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
                "--listen-address=127.0.0.1", "--port=\(port)", "--local-ttl=300", "--pid-file=\(directory.path)/pid", "--user=root", "--group=root",
            ] + records.sorted { $0.key < $1.key }.map { "--host-record=\($0.key),\($0.value)" }
                + txt.flatMap { name, texts in texts.map { "--txt-record=\(name),\($0)" } } + extra, stderr: errors)
            self.process = process
            let port = port
            if eventually(timeout: 5, { !process.isRunning || (try? dig(["@127.0.0.1", "-p", "\(port)", "+short", records.keys.first ?? "x"])) != nil }),
                process.isRunning
            {
                return
            }
            process.stop()
        }
        throw CommandFailed(command: "dnsmasq", status: 1, output: "did not start: \((try? String(contentsOfFile: errors, encoding: .utf8)) ?? "")")
    }

    /// Stops answering (an upstream that went away).
    func stop() {
        process?.stop()
        process = nil
    }

    deinit {
        process?.stop()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// A UDP socket that reads queries and never answers (an upstream that is down without saying so).
final class DNSBlackHole {
    let port = freeDualPort()
    private let process: BackgroundCommand

    init() throws {
        process = try BackgroundCommand([
            python3, "-c", "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('127.0.0.1',int(sys.argv[1])))\nwhile True: s.recv(4096)",
            "\(port)",
        ])
        usleep(200_000)
    }
}

/// `dig` with one try and a short timeout; its whole output.
@discardableResult
func dig(_ arguments: [String], timeout: Int = 2) throws -> String {
    let (status, output) = try command(["dig", "+tries=1", "+timeout=\(timeout)"] + arguments)
    guard status == 0 else { throw CommandFailed(command: "dig \(arguments.joined(separator: " "))", status: status, output: output) }
    return output
}

/// The status word of a dig answer (NOERROR, NXDOMAIN, SERVFAIL, REFUSED).
func digStatus(_ output: String) -> String? {
    guard let range = output.range(of: "status: ") else { return nil }
    return String(output[range.upperBound...].prefix { $0.isLetter })
}

/// A DNS-over-TLS resolver: Debian's unbound serving TLS (RFC 7858) with a test CA's certificate for
/// `dot.test`, forwarding with a cache to an upstream on loopback — a real resolver, as users run one.
final class DoTServer {
    private(set) var port = 0
    let pki: TestPKI
    private var process: BackgroundCommand?

    init(forwardingTo upstreamPort: Int) throws {
        pki = try TestPKI()
        let (certificate, key) = try pki.issue("dot", dnsNames: ["dot.test"])
        let directory = URL(fileURLWithPath: pki.path("unbound"))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for _ in 0..<3 {
            port = freeDualPort()
            let configuration = directory.appendingPathComponent("unbound.conf").path
            try """
                server:
                  interface: 127.0.0.1@\(port)
                  port: \(port)
                  tls-port: \(port)
                  tls-service-key: "\(key)"
                  tls-service-pem: "\(certificate)"
                  do-daemonize: no
                  username: ""
                  chroot: ""
                  pidfile: ""
                  directory: "\(directory.path)"
                  use-syslog: no
                  logfile: ""
                  access-control: 127.0.0.0/8 allow
                  do-not-query-localhost: no
                  module-config: "iterator"
                  # The tests' names are under test. (RFC 6761), which unbound answers NXDOMAIN itself by default.
                  local-zone: "test." nodefault
                forward-zone:
                  name: "."
                  forward-addr: 127.0.0.1@\(upstreamPort)
                """.write(toFile: configuration, atomically: true, encoding: .utf8)
            let process = try BackgroundCommand([which("unbound") ?? "/usr/sbin/unbound", "-d", "-c", configuration], stderr: directory.appendingPathComponent("stderr").path)
            self.process = process
            let port = port
            if eventually(timeout: 10, { !process.isRunning || (try? command(["ss", "-Hltn", "sport = :\(port)"]).output.contains("LISTEN")) == true }),
                process.isRunning
            {
                return
            }
            process.stop()
        }
        let errors = (try? String(contentsOfFile: directory.appendingPathComponent("stderr").path, encoding: .utf8)) ?? ""
        throw CommandFailed(command: "unbound", status: 1, output: "did not listen: \(errors)")
    }

    deinit { process?.stop() }
}
