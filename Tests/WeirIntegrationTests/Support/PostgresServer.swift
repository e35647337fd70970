import Foundation

/// A throwaway PostgreSQL cluster from Debian's `postgresql` package, in a temporary folder, on a free
/// loopback port, trusting local connections. Run as the `postgres` user when the test runs as root
/// (initdb refuses root). Stopped and removed with the value.
final class PostgresServer: @unchecked Sendable {
    static var binDirectory: String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        guard let newest = versions.last else { return nil }
        let bin = "\(root)/\(newest)/bin"
        return FileManager.default.fileExists(atPath: bin + "/initdb") ? bin : nil
    }

    static var available: Bool { binDirectory != nil && (getuid() != 0 || getpwnam("postgres") != nil) }

    let directory: String
    let port = freePort()
    private let bin: String
    private var server: Process?

    var url: String { "postgres://weir@127.0.0.1:\(port)/weir?tlsmode=disable" }

    init() throws {
        guard let bin = Self.binDirectory else { throw CommandFailed(command: "initdb", status: -1, output: "PostgreSQL is not installed") }
        self.bin = bin
        directory = "/tmp/weir-pg-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if getuid() == 0 { _ = try command(["chown", "postgres:postgres", directory]) }
        try run(["\(bin)/initdb", "-D", "\(directory)/data", "-A", "trust", "-U", "weir", "--no-sync"])
        // The server runs as this test's child (not daemonized by pg_ctl): its output goes to a file, never a
        // pipe the test reads, and it goes when the test does.
        let server = Process()
        server.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        server.arguments = (getuid() == 0 ? ["runuser", "-u", "postgres", "--"] : []) + [
            "\(bin)/postgres", "-D", "\(directory)/data", "-p", "\(port)", "-k", directory, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
        ]
        _ = FileManager.default.createFile(atPath: "\(directory)/server.log", contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: "\(directory)/server.log"))
        server.standardOutput = log
        server.standardError = log
        try server.run()
        self.server = server
        guard eventually(timeout: 30, { (try? self.run(["\(bin)/pg_isready", "-h", "127.0.0.1", "-p", "\(port)"])) != nil }) else {
            throw CommandFailed(command: "postgres", status: -1, output: (try? String(contentsOfFile: "\(directory)/server.log", encoding: .utf8)) ?? "")
        }
        try run(["\(bin)/psql", "-h", "127.0.0.1", "-p", "\(port)", "-U", "weir", "-d", "postgres", "-c", "CREATE DATABASE weir"])
    }

    deinit {
        // The postmaster's pid (runuser's child): SIGQUIT is PostgreSQL's immediate shutdown.
        if let text = try? String(contentsOfFile: "\(directory)/data/postmaster.pid", encoding: .utf8),
            let pid = text.split(separator: "\n").first.flatMap({ Int32($0) })
        {
            kill(pid, SIGQUIT)
        }
        server?.waitUntilExit()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func run(_ arguments: [String]) throws {
        let full = getuid() == 0 ? ["runuser", "-u", "postgres", "--"] + arguments : arguments
        let (status, output) = try command(full)
        guard status == 0 else { throw CommandFailed(command: arguments.joined(separator: " "), status: status, output: output) }
    }
}
