import Foundation

/// The path of a program, searched in PATH and the sbin directories (where `ip` and `tc` live).
func which(_ name: String) -> String? {
    let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
    for directory in path + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] where FileManager.default.isExecutableFile(atPath: directory + "/" + name) {
        return directory + "/" + name
    }
    return nil
}

/// The system's Python, not a version manager's shim (which forks, so terminating it would leave Python running).
let python3: String = FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : (which("python3") ?? "python3")

/// Why kernel tests cannot run here, or nil when they can: they need root, `ip`, eBPF and network namespaces.
let kernelTestsUnavailable: String? = {
    if getuid() != 0 { return "needs root (network namespaces, eBPF)" }
    for tool in ["ip", "tc", "bpftool", "curl", "python3"] where which(tool) == nil { return "needs \(tool) installed" }
    if !FileManager.default.fileExists(atPath: "/proc/sys/kernel/unprivileged_bpf_disabled") { return "kernel without the bpf() system call" }
    let probe = "weir-probe-\(getpid())"
    guard (try? command([which("ip")!, "netns", "add", probe]))?.status == 0 else { return "cannot create network namespaces" }
    _ = try? command([which("ip")!, "netns", "del", probe])
    return nil
}()

/// Two network namespaces joined by a veth pair, with IPv4 and IPv6 addresses and static neighbour entries
/// (so no ARP or neighbour discovery runs between the test's packets), plus a private bpf filesystem for
/// pins. Created for one test and deleted with it.
final class NamespacePair: NamespaceCommands, @unchecked Sendable {
    /// The agent's side.
    let agent: String
    let peer: String
    let agentInterface: String
    let peerInterface: String
    let agentIPv4 = "10.201.0.1"
    let peerIPv4 = "10.201.0.2"
    let agentIPv6 = "fd00:201::1"
    let peerIPv6 = "fd00:201::2"
    /// A bpf filesystem mounted for this test: `ip netns exec` gives the agent a fresh /sys, so pins must live
    /// elsewhere to outlive an agent restart.
    let bpffs: String
    var pinRoot: String { bpffs + "/weir" }

    init() throws {
        let tag = namespaceTag("x")
        agent = "weir-a\(tag)"
        peer = "weir-b\(tag)"
        agentInterface = "wa\(tag)"
        peerInterface = "wb\(tag)"
        bpffs = FileManager.default.temporaryDirectory.appendingPathComponent("weir-bpffs-\(tag)").path
        try sh(["ip", "netns", "add", agent])
        try sh(["ip", "netns", "add", peer])
        try connect()
        try sh(["ip", "-n", agent, "link", "set", "lo", "up"])
        try sh(["ip", "-n", peer, "link", "set", "lo", "up"])
        try FileManager.default.createDirectory(atPath: bpffs, withIntermediateDirectories: true)
        try sh(["mount", "-t", "bpf", "bpf", bpffs])
    }

    /// Creates the veth pair with its addresses and neighbour entries: at the start, and again after a test
    /// deleted it (`ip link del`), as an operator recreating an interface would.
    func connect() throws {
        let mac = (agent: "02:00:00:00:01:01", peer: "02:00:00:00:01:02")
        try sh(["ip", "link", "add", agentInterface, "netns", agent, "address", mac.agent, "type", "veth",
                "peer", "name", peerInterface, "netns", peer, "address", mac.peer])
        for (ns, interface, v4, v6, peerV4, peerV6, peerMAC) in [
            (agent, agentInterface, agentIPv4, agentIPv6, peerIPv4, peerIPv6, mac.peer),
            (peer, peerInterface, peerIPv4, peerIPv6, agentIPv4, agentIPv6, mac.agent),
        ] {
            try sh(["ip", "-n", ns, "addr", "add", "\(v4)/24", "dev", interface])
            try sh(["ip", "-n", ns, "addr", "add", "\(v6)/64", "dev", interface, "nodad"])
            try sh(["ip", "-n", ns, "link", "set", interface, "up"])
            try sh(["ip", "-n", ns, "neigh", "replace", peerV4, "lladdr", peerMAC, "dev", interface, "nud", "permanent"])
            try sh(["ip", "-n", ns, "neigh", "replace", peerV6, "lladdr", peerMAC, "dev", interface, "nud", "permanent"])
        }
    }

    deinit {
        removeNamespace(agent)
        removeNamespace(peer)
        _ = try? command([which("umount")!, bpffs])
        try? FileManager.default.removeItem(atPath: bpffs)
    }

    /// Runs a Python script inside a namespace (traffic generators; see `TrafficScripts`).
    @discardableResult
    func python(_ ns: String, _ script: String, _ arguments: [String] = []) throws -> String {
        try inside(ns, [python3, "-c", script] + arguments)
    }

    /// The kernel's own SNMP counters of a namespace (`Udp` `OutDatagrams`, `Udp6OutDatagrams`, `Tcp` `OutSegs`…),
    /// named `Udp.OutDatagrams`, `Udp6OutDatagrams`.
    func snmp(_ ns: String) throws -> [String: Int] {
        var result: [String: Int] = [:]
        let lines = try inside(ns, ["cat", "/proc/net/snmp"]).split(separator: "\n")
        for index in stride(from: 0, to: lines.count - 1, by: 2) {
            let names = lines[index].split(separator: " "), values = lines[index + 1].split(separator: " ")
            guard names.count == values.count, let section = names.first?.dropLast() else { continue }
            for (name, value) in zip(names.dropFirst(), values.dropFirst()) { result["\(section).\(name)"] = Int(value) }
        }
        for line in try inside(ns, ["cat", "/proc/net/snmp6"]).split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if parts.count == 2 { result[String(parts[0])] = Int(parts[1]) }
        }
        return result
    }
}

/// A short tag unique to this test process and call, for namespace and interface names (IFNAMSIZ is 16).
func namespaceTag(_ kind: String) -> String {
    struct Counter { nonisolated(unsafe) static var next = 0 }
    let number = tagLock.withLock {
        Counter.next += 1
        return Counter.next
    }
    return "\(getpid() % 100_000)\(kind)\(number)"
}
private let tagLock = NSLock()

/// Commands for tests that build namespaces: run a tool (failing the test when it fails), run one inside a
/// namespace, start a Python helper there in the background.
protocol NamespaceCommands {}

extension NamespaceCommands {
    @discardableResult
    func sh(_ arguments: [String]) throws -> String {
        let (status, output) = try command([which(arguments[0]) ?? arguments[0]] + arguments.dropFirst())
        guard status == 0 else { throw CommandFailed(command: arguments.joined(separator: " "), status: status, output: output) }
        return output
    }

    @discardableResult
    func inside(_ ns: String, _ arguments: [String]) throws -> String { try sh(["ip", "netns", "exec", ns] + arguments) }

    /// Starts `TrafficScripts.udpHalfEcho` in `ns` and waits until its socket is bound: a datagram sent before
    /// that is lost, and its sender would wait for the echo in vain.
    @discardableResult
    func udpHalfEcho(_ ns: String, family: String, address: String, port: Int) throws -> Process {
        let process = try background(ns, TrafficScripts.udpHalfEcho, [family, address, "\(port)"])
        guard eventually(timeout: 5, { (try? inside(ns, ["ss", "-Hlun", "sport = :\(port)"]))?.isEmpty == false }) else {
            process.stopHelper()
            throw HelperFailed("the UDP echo on \(address):\(port) in \(ns) did not start")
        }
        return process
    }

    /// Starts a Python script inside a namespace; terminate the process when done (the namespace's removal
    /// kills it otherwise).
    func background(_ ns: String, _ script: String, _ arguments: [String] = []) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: which("ip")!)
        process.arguments = ["netns", "exec", ns, python3, "-c", script] + arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }
}

/// Polls `condition` for up to `timeout` seconds.
func eventually(timeout: TimeInterval = 8, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(100_000)
    }
    return try condition()
}

/// Kills whatever still runs in a namespace (a helper whose test failed early), then deletes it.
func removeNamespace(_ ns: String) {
    let pids = (try? command([which("ip")!, "netns", "pids", ns]).output) ?? ""
    for pid in pids.split(separator: "\n").compactMap({ Int32($0) }) { kill(pid, SIGKILL) }
    _ = try? command([which("ip")!, "netns", "del", ns])
}

struct CommandFailed: Error, CustomStringConvertible {
    let command: String
    let status: Int32
    let output: String
    var description: String { "\(command) exited \(status): \(output)" }
}

/// Traffic generators run with `python3 -c` inside the namespaces: they send known amounts with real
/// sockets and print what they did.
enum TrafficScripts {
    /// argv: family host port count size. Sends `count` datagrams of `size` bytes one at a time, waiting for
    /// each reply (so none is lost), and prints the number of replies.
    static let udpPingPong = """
        import socket, sys
        family, host, port, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        s = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6, socket.SOCK_DGRAM)
        s.settimeout(5)
        replies = 0
        for _ in range(count):
            s.sendto(b"q" * size, (host, port))
            s.recvfrom(65536)
            replies += 1
        print(replies)
        """

    /// argv: family address port. Answers every datagram with one of half its size.
    static let udpHalfEcho = """
        import socket, sys
        family, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
        s = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6, socket.SOCK_DGRAM)
        s.bind((address, port))
        while True:
            data, peer = s.recvfrom(65536)
            s.sendto(data[: len(data) // 2], peer)
        """

    /// argv: family address port reply_bytes. For each connection: reads to EOF, sends `reply_bytes`, closes.
    static let tcpReadThenReply = """
        import socket, sys
        family, address, port, reply = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        s = socket.socket(socket.AF_INET if family == "4" else socket.AF_INET6, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        s.listen(16)
        while True:
            c, _ = s.accept()
            while c.recv(1 << 20):
                pass
            c.sendall(b"r" * reply)
            c.close()
        """

    /// argv: family host port send_bytes. Sends, half-closes, reads the reply to EOF, prints its size.
    static let tcpSendThenRead = """
        import socket, sys, time
        family, host, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        for attempt in range(50):
            try:
                s = socket.create_connection((host, port), timeout=10)
                break
            except OSError:
                time.sleep(0.1)
        s.sendall(b"s" * size)
        s.shutdown(socket.SHUT_WR)
        received = 0
        while True:
            data = s.recv(1 << 20)
            if not data:
                break
            received += len(data)
        s.close()
        print(received)
        """

    /// argv: count destination. Sends one UDP datagram from each of `count` spoofed IPv4 sources
    /// (10.202.0.0 onwards) to `destination`, with a raw socket.
    static let spoofedSources = """
        import socket, struct, sys
        count, destination = int(sys.argv[1]), sys.argv[2]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        dst = socket.inet_aton(destination)
        for i in range(count):
            src = struct.pack("!I", (10 << 24) | (202 << 16) | i)
            payload = b"x" * 8
            udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xffff, 0, 64, 17, 0, src, dst)
            s.sendto(ip + udp, (destination, 0))
        print(count)
        """
}

extension Process {
    /// Ends a helper a test started (a server, a peer). SIGKILL, because helpers inherit the test runner's
    /// blocked-signal mask: a SIGTERM would stay pending and the helper would outlive the test.
    func stopHelper() {
        guard isRunning else { return }
        // Children first (nginx's workers), which would outlive a killed master.
        for child in childProcesses(of: processIdentifier) { kill(child, SIGKILL) }
        kill(processIdentifier, SIGKILL)
        waitUntilExit()
    }
}

/// The processes whose parent is `pid`, from /proc.
func childProcesses(of pid: Int32) -> [Int32] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { entry -> Int32? in
        guard let child = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
            let end = stat.lastIndex(of: ")")
        else { return nil }
        // "pid (comm) state ppid ...": the command may hold spaces, so fields are counted after its ")".
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        return fields.count > 1 && Int32(fields[1]) == pid ? child : nil
    }
}
