import Foundation

/// Three network namespaces for the enforcement tests: a client, a gateway that forwards (where the agent
/// runs), and an upstream with "public" addresses — which exist only inside these namespaces, so no packet
/// leaves them.
///
///     client 10.50.0.2, fd50::2  ──  10.50.0.1, fd50::1  gateway  11.0.0.1, 2a01:4f8::1  ──  upstream
///                                                                            11.0.0.2, .3, .53, 1.1.1.1, 10.60.0.2
///                                                                            2a01:4f8::2, ::3
final class GatewayTopology: NamespaceCommands, @unchecked Sendable {
    let client: String
    let gateway: String
    let upstream: String
    /// Interface names, on the gateway: toward the client and toward the upstream.
    let gatewayInside: String
    let gatewayOutside: String
    let clientInterface: String
    /// A bpf filesystem for count.ebpf's pins when asked for (see `NamespacePair.bpffs`).
    let bpffs: String?
    var pinRoot: String? { bpffs.map { $0 + "/weir" } }

    init(upstreamRoutesBack: Bool = true, withBPFFS: Bool = false) throws {
        let tag = namespaceTag("y")
        client = "weir-c\(tag)"
        gateway = "weir-g\(tag)"
        upstream = "weir-u\(tag)"
        gatewayInside = "gi\(tag)"
        gatewayOutside = "go\(tag)"
        clientInterface = "ci\(tag)"
        bpffs = withBPFFS ? FileManager.default.temporaryDirectory.appendingPathComponent("weir-bpffs-\(tag)").path : nil
        let upstreamInterface = "uo\(tag)"
        for ns in [client, gateway, upstream] {
            try sh(["ip", "netns", "add", ns])
            try sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        }
        try sh(["ip", "link", "add", gatewayInside, "netns", gateway, "type", "veth", "peer", "name", clientInterface, "netns", client])
        try sh(["ip", "link", "add", gatewayOutside, "netns", gateway, "type", "veth", "peer", "name", upstreamInterface, "netns", upstream])
        let addresses = [
            (client, clientInterface, ["10.50.0.2/24", "fd50::2/64"]),
            (gateway, gatewayInside, ["10.50.0.1/24", "fd50::1/64"]),
            (gateway, gatewayOutside, ["11.0.0.1/24", "2a01:4f8::1/64"]),
            (upstream, upstreamInterface, ["11.0.0.2/24", "11.0.0.3/24", "11.0.0.53/24", "1.1.1.1/32", "10.60.0.2/24", "2a01:4f8::2/64", "2a01:4f8::3/64"]),
        ]
        for (ns, interface, list) in addresses {
            for address in list {
                try sh(["ip", "-n", ns, "addr", "add", address, "dev", interface] + (address.contains(":") ? ["nodad"] : []))
            }
            try sh(["ip", "-n", ns, "link", "set", interface, "up"])
        }
        try sh(["ip", "-n", client, "route", "add", "default", "via", "10.50.0.1"])
        try sh(["ip", "-n", client, "-6", "route", "add", "default", "via", "fd50::1"])
        try sh(["ip", "-n", gateway, "route", "add", "10.60.0.0/24", "via", "11.0.0.2"])
        if upstreamRoutesBack {
            try sh(["ip", "-n", upstream, "route", "add", "10.50.0.0/24", "via", "11.0.0.1"])
            try sh(["ip", "-n", upstream, "-6", "route", "add", "fd50::/64", "via", "2a01:4f8::1"])
        }
        try sh(["ip", "netns", "exec", gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        try sh(["ip", "netns", "exec", gateway, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"])
        if let bpffs {
            try FileManager.default.createDirectory(atPath: bpffs, withIntermediateDirectories: true)
            try sh(["mount", "-t", "bpf", "bpf", bpffs])
        }
    }

    deinit {
        for ns in [client, gateway, upstream] { removeNamespace(ns) }
        if let bpffs {
            _ = try? command([which("umount")!, bpffs])
            try? FileManager.default.removeItem(atPath: bpffs)
        }
    }

    /// Weir's table on the gateway, as `nft list` prints it ("" when there is none).
    func ruleset() -> String {
        guard let (status, output) = try? command([which("ip")!, "netns", "exec", gateway, which("nft")!, "list", "table", "inet", "weir"]),
            status == 0
        else { return "" }
        return output
    }

    /// Whether a TCP connection from the client to `host`:`port` opens (two tries of two seconds: the first
    /// packets of a path wait for neighbour discovery).
    func clientReaches(_ host: String, port: Int) -> Bool {
        for _ in 0..<2 {
            let output = (try? command([which("ip")!, "netns", "exec", client, python3, "-c", Scripts.connect, host, "\(port)"]).output) ?? ""
            if output.contains("open") { return true }
        }
        return false
    }

    enum Scripts {
        /// argv: host port. Prints "open" or the error.
        static let connect = """
            import socket, sys
            try:
                socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
                print("open")
            except Exception as error:
                print(error)
            """

        /// argv: port. Accepts on every address of the namespace, IPv4 and IPv6, and closes; writes the peer
        /// address of each connection to stdout.
        static let acceptAll = """
            import socket, sys, threading
            def serve(family, address):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind((address, int(sys.argv[1])))
                s.listen(64)
                while True:
                    c, peer = s.accept()
                    print(peer[0], flush=True)
                    c.close()
            threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
            serve(socket.AF_INET, "0.0.0.0")
            """

        /// argv: answers_file address port [ttl]. A DNS server answering A queries with the IPv4 addresses listed
        /// in the file and AAAA queries with the IPv6 ones (one per line, read at each query), TTL 1 unless given.
        /// It binds the one address so that answers come from it.
        static let dnsServer = """
            import socket, struct, sys
            path, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
            ttl = int(sys.argv[4]) if len(sys.argv) > 4 else 1
            s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((address, port))
            while True:
                query, peer = s.recvfrom(512)
                ident, flags, qd = struct.unpack("!HHH", query[:6])
                end = 12
                while query[end] != 0:
                    end += query[end] + 1
                question = query[12:end + 5]
                qtype = struct.unpack("!H", query[end + 1:end + 3])[0]
                lines = [line.strip() for line in open(path) if line.strip()]
                if qtype == 1:
                    data = [socket.inet_aton(a) for a in lines if ":" not in a]
                elif qtype == 28:
                    data = [socket.inet_pton(socket.AF_INET6, a) for a in lines if ":" in a]
                else:
                    data = []
                answers = b"".join(b"\\xc0\\x0c" + struct.pack("!HHIH", qtype, 1, ttl, len(d)) + d for d in data)
                header = struct.pack("!HHHHHH", ident, 0x8180, 1, len(data), 0, 0)
                s.sendto(header + question + answers, peer)
            """

        /// argv: port. Echoes on every IPv4 address of the namespace, holding each connection until the peer
        /// closes it.
        static let echoServer = """
            import socket, sys, threading
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", int(sys.argv[1])))
            s.listen(64)
            def echo(c):
                while True:
                    data = c.recv(4096)
                    if not data:
                        break
                    c.sendall(data)
                c.close()
            while True:
                c, peer = s.accept()
                threading.Thread(target=echo, args=(c,), daemon=True).start()
            """

        /// argv: host port seconds. One connection that sends a byte every 0.25 s for `seconds` and reads it
        /// back; prints "held" when every byte returned, else where it broke.
        static let holdConnection = """
            import socket, sys, time
            host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
            try:
                c = socket.create_connection((host, port), timeout=2)
                end = time.time() + seconds
                while time.time() < end:
                    c.sendall(b"x")
                    if c.recv(1) != b"x":
                        raise Exception("closed")
                    time.sleep(0.25)
                print("held")
            except Exception as error:
                print("broken:", error)
            """

        /// argv: server port name [AAAA]. One A (or AAAA) query, over IPv6 to an IPv6 server; prints the server
        /// that answered and the answer's addresses.
        static let dnsQuery = """
            import socket, struct, sys
            server, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
            qtype = 28 if len(sys.argv) > 4 and sys.argv[4] == "AAAA" else 1
            q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\x00" + struct.pack("!HH", qtype, 1)
            family = socket.AF_INET6 if ":" in server else socket.AF_INET
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(2)
            s.sendto(q, (server, port))
            data, peer = s.recvfrom(512)
            count = struct.unpack("!H", data[6:8])[0]
            at = 12
            while data[at] != 0:
                at += data[at] + 1
            at += 5
            found = []
            for _ in range(count):
                at += 2 if data[at] & 0xC0 == 0xC0 else data.index(0, at) + 1 - at
                rtype, _, _, length = struct.unpack("!HHIH", data[at:at + 10])
                rdata = data[at + 10:at + 10 + length]
                at += 10 + length
                if rtype == 1:
                    found.append(socket.inet_ntoa(rdata))
                elif rtype == 28:
                    found.append(socket.inet_ntop(socket.AF_INET6, rdata))
            print(peer[0], found)
            """
    }
}
