import Foundation

/// Thousands of TCP connections held open through an agent, by a client process of their own, to a backend
/// process of its own (the test runner keeps its descriptors for itself). Both raise their soft descriptor
/// limit to the hard one. Optionally run inside a network namespace.
final class ConnectionHerd: @unchecked Sendable {
    private let clients: Process
    private let input: FileHandle
    private let output: LineReader

    /// Opens `count` connections to `host`:`port`, each proven by one echoed byte, before returning.
    init(count: Int, host: String = "127.0.0.1", port: Int, netns: String? = nil, timeout: TimeInterval = 120) throws {
        // A herd that died must fail the test with EPIPE, not end the test runner with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
        (clients, input, output) = try Self.python(Self.clientScript, [host, "\(port)", "\(count)"], netns: netns)
        let line = try output.line(timeout: timeout)
        guard line == "ready \(count)" else {
            clients.stopHelper()
            throw HelperFailed("the herd did not open its \(count) connections: \(line)")
        }
    }

    deinit { clients.stopHelper() }

    /// Sends one byte on every connection and reads its echo; returns how many came back.
    func echoing(timeout: TimeInterval = 120) throws -> Int {
        try input.write(contentsOf: Data("check\n".utf8))
        let line = try output.line(timeout: timeout)
        guard line.hasPrefix("ok "), let count = Int(line.dropFirst(3)) else { throw HelperFailed("herd: \(line)") }
        return count
    }

    /// Closes every connection and waits for the client process to end.
    func close() {
        try? input.write(contentsOf: Data("quit\n".utf8))
        _ = try? output.line(timeout: 30)
        clients.stopHelper()
    }

    /// An echo server for the herd, in a process of its own; stop it with `stopHelper()`.
    static func echoServer(host: String = "127.0.0.1", port: Int, netns: String? = nil) throws -> Process {
        let (process, _, output) = try python(echoScript, [host, "\(port)"], netns: netns)
        guard try output.line(timeout: 15) == "listening" else {
            process.stopHelper()
            throw HelperFailed("the echo server did not start")
        }
        return process
    }

    /// A Python helper speaking lines on stdin and stdout.
    static func python(_ script: String, _ arguments: [String], netns: String?) throws -> (Process, FileHandle, LineReader) {
        let process = Process()
        if let netns {
            process.executableURL = URL(fileURLWithPath: which("ip")!)
            process.arguments = ["netns", "exec", netns, python3, "-c", script] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: python3)
            process.arguments = ["-c", script] + arguments
        }
        let stdin = Pipe(), stdout = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = FileHandle.nullDevice
        try process.run()
        return (process, stdin.fileHandleForWriting, LineReader(stdout.fileHandleForReading))
    }

    static let raiseLimit = """
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        """

    /// argv: host port count. Opens the connections (each proven by an echoed byte), prints "ready N"; then
    /// per stdin line: "check" sends a byte on each and prints "ok <echoed>", "quit" closes all.
    static let clientScript = raiseLimit + """

        import socket, sys, time
        host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        conns = []
        def roundtrip(c):
            try:
                c.sendall(b"x")
                return c.recv(1) == b"x"
            except OSError:
                return False
        try:
            for i in range(count):
                c = socket.create_connection((host, port), timeout=20)
                conns.append(c)
            failed = sum(0 if roundtrip(c) else 1 for c in conns)
            print("ready %d" % (count - failed) if failed else "ready %d" % count, flush=True)
        except OSError as error:
            print("failed after %d: %s" % (len(conns), error), flush=True)
        for line in sys.stdin:
            if line.strip() == "check":
                for c in conns:
                    try:
                        c.sendall(b"x")
                    except OSError:
                        pass
                ok = 0
                for c in conns:
                    try:
                        if c.recv(1) == b"x":
                            ok += 1
                    except OSError:
                        pass
                print("ok %d" % ok, flush=True)
            elif line.strip() == "quit":
                for c in conns:
                    c.close()
                print("closed", flush=True)
                break
        """

    /// argv: host port. An echo server for any number of connections; prints "listening" once bound.
    static let echoScript = raiseLimit + """

        import asyncio, sys
        async def echo(reader, writer):
            try:
                while True:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            writer.close()
        async def main():
            server = await asyncio.start_server(echo, sys.argv[1], int(sys.argv[2]), backlog=4096)
            print("listening", flush=True)
            await server.serve_forever()
        asyncio.run(main())
        """
}

/// Reads a child's output line by line, with a timeout per line.
final class LineReader: @unchecked Sendable {
    private let handle: FileHandle
    private var buffer = Data()
    private let lock = NSLock()

    init(_ handle: FileHandle) { self.handle = handle }

    func line(timeout: TimeInterval) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffer[buffer.startIndex..<newline], as: UTF8.self)
                buffer.removeSubrange(buffer.startIndex...newline)
                return line
            }
            let remaining = deadline.timeIntervalSinceNow
            guard remaining > 0 else { throw TimedOut() }
            var poller = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(min(remaining, 1) * 1000)) > 0 else { continue }
            let chunk = handle.availableData
            if chunk.isEmpty { throw HelperFailed("the helper ended; output so far: \(String(decoding: buffer, as: UTF8.self))") }
            buffer.append(chunk)
        }
    }
}

/// The number of descriptors a process has open.
func openDescriptors(pid: Int32) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
}

/// The pipes a process has open (both ends count).
func pipeDescriptors(pid: Int32) -> Int {
    let folder = "/proc/\(pid)/fd"
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
    return entries.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "\(folder)/\($0)"))?.hasPrefix("pipe:") == true }.count
}

/// CPU seconds (user and system) a process has used.
func cpuSeconds(pid: Int32) -> Double { cpuSeconds(statFile: "/proc/\(pid)/stat") }

/// CPU seconds of each of a process's threads whose name starts with `prefix`, by name.
func threadCPUSeconds(pid: Int32, named prefix: String) -> [String: Double] {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    var result: [String: Double] = [:]
    for task in tasks {
        guard let name = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8), name.hasPrefix(prefix) else { continue }
        result[name.trimmingCharacters(in: .whitespacesAndNewlines)] = cpuSeconds(statFile: "/proc/\(pid)/task/\(task)/stat")
    }
    return result
}

private func cpuSeconds(statFile: String) -> Double {
    guard let stat = try? String(contentsOfFile: statFile, encoding: .utf8), let end = stat.lastIndex(of: ")") else { return 0 }
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    // utime and stime are fields 14 and 15 of stat; here counted after the command, so 12 and 13 (0-based 11, 12).
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// The highest descriptor number a process has open.
func highestDescriptor(pid: Int32) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap { Int($0) }.max() ?? -1
}

struct HelperFailed: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `count` different ports free on 127.0.0.1, from the same walk below the ephemeral range as every other
/// server port (`freePort`): a walk of their own from 20,000 up once handed an agent's metrics port one of them.
func freePorts(_ count: Int) -> [Int] {
    (0..<count).map { _ in freePort() }
}
