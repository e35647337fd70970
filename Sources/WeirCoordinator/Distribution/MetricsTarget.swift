import NIOCore

/// Where Prometheus scrapes an agent: the metrics address the agent announced in its hello, with an
/// unspecified host (0.0.0.0, ::) replaced by the address the agent's connection came from. Only IP
/// literals and a valid port are accepted — an agent cannot make Prometheus scrape a name of its choosing.
enum MetricsTarget {
    /// "host:port" ("[v6]:port"), or nil when the announcement is absent or not an IP address and port.
    static func address(announced: String?, peer: String?) -> String? {
        guard let announced, announced.utf8.count <= 64, let colon = announced.lastIndex(of: ":") else { return nil }
        var host = String(announced[..<colon])
        guard let port = Int(announced[announced.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard let canonical = try? SocketAddress(ipAddress: host, port: 0).ipAddress else { return nil }
        host = canonical
        if host == "0.0.0.0" || host == "::" {
            guard var peer, let peerCanonical = try? SocketAddress(ipAddress: peer, port: 0).ipAddress else { return nil }
            peer = peerCanonical
            // An IPv4 agent on a dual-stack socket.
            if peer.hasPrefix("::ffff:"), peer.contains(".") { peer.removeFirst("::ffff:".count) }
            host = peer
        }
        return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}
