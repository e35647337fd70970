import CWeirNetlink
import Glibc
import WeirCore

/// Routes and rules an interface needs beyond its own networks, kept equal to the peers' allowed IPs:
/// - a network behind a peer (a site) gets a route through the interface in the main table;
/// - a default route (`0.0.0.0/0` or `::/0`, a client sending everything through the tunnel) gets wg-quick's
///   policy routing: the default route through the interface in table T, `not fwmark T lookup T`, and
///   `lookup main suppress_prefixlength 0` before it (the main table's specific routes — the LAN, the
///   server's own address — still win). The device marks its own UDP packets with T (the stage's `fwmark`,
///   51820 when none), so they leave through the main table and do not loop into the tunnel.
/// Everything is installed with protocol 88 (`ip route show proto 88`, `ip rule show`), which is how it is
/// found again; the rules are the host's, so one full-tunnel interface per host.
struct TunnelRouting {
    static let routeProtocol: UInt8 = 88
    static let suppressPriority: UInt32 = 32000
    static let markPriority: UInt32 = 32001
    static let defaultTable: UInt32 = 51820
    static let mainTable: UInt32 = 254

    let interface: String
    let ifindex: Int32
    let localNetworks: [IPNetwork]

    struct RoutingError: Error, CustomStringConvertible {
        let description: String
    }

    private static func check(_ result: Int32) throws {
        if result < 0 { throw RoutingError(description: String(cString: weir_nft_last_error())) }
    }

    /// The table (and the device's fwmark) for full-tunnel routing; nil when no peer has a default route.
    static func fullTunnelTable(fwmark: UInt32, peers: [DesiredPeer]) -> UInt32? {
        peers.contains { $0.allowedIPs.contains { $0.prefix == 0 } } ? (fwmark != 0 ? fwmark : defaultTable) : nil
    }

    /// Takes routes and rules to what `peers` need; returns what changed.
    func converge(peers: [DesiredPeer], fullTunnelTable table: UInt32?) throws -> [String] {
        struct Route: Hashable, Comparable {
            var network: IPNetwork
            var table: UInt32
            static func < (a: Route, b: Route) -> Bool { (a.network, a.table) < (b.network, b.table) }
        }
        var wanted: Set<Route> = []
        for peer in peers {
            for network in peer.allowedIPs where !localNetworks.contains(where: { $0.contains(network) }) {
                if network.prefix > 0 {
                    wanted.insert(Route(network: network, table: Self.mainTable))
                } else if let table {
                    wanted.insert(Route(network: network, table: table))
                }
            }
        }
        var installed: Set<Route> = []
        for family in [AF_INET, AF_INET6] {
            var routes: UnsafeMutablePointer<weir_route>?
            var count = 0
            try Self.check(weir_route_list(UInt8(family), Self.routeProtocol, &routes, &count))
            defer { free(routes) }
            for index in 0..<count where routes![index].oif == ifindex {
                var route = routes![index]
                let bytes = withUnsafeBytes(of: &route.destination) { Array($0.prefix(family == AF_INET ? 4 : 16)) }
                installed.insert(Route(network: IPNetwork(bytes: bytes, prefix: Int(route.prefix_len)), table: route.table))
            }
        }
        var changes: [String] = []
        for route in wanted.subtracting(installed).sorted() {
            var entry = Self.route(route.network, table: route.table, ifindex: ifindex)
            try Self.check(weir_route_add(&entry))
            changes.append("route \(route.network) dev \(interface) table \(route.table) added")
        }
        for route in installed.subtracting(wanted).sorted() {
            var entry = Self.route(route.network, table: route.table, ifindex: ifindex)
            try Self.check(weir_route_delete(&entry))
            changes.append("route \(route.network) dev \(interface) table \(route.table) removed")
        }
        let families = Set(peers.flatMap(\.allowedIPs).filter { $0.prefix == 0 }.map { $0.isIPv4 ? AF_INET : AF_INET6 })
        changes += try Self.convergeRules(table.map { table in families.flatMap { Self.rules(family: $0, table: table) } } ?? [])
        return changes
    }

    /// The full-tunnel rules of one family.
    static func rules(family: Int32, table: UInt32) -> [weir_rule] {
        var suppress = weir_rule()
        suppress.family = UInt8(family)
        suppress.protocol = routeProtocol
        suppress.priority = suppressPriority
        suppress.table = mainTable
        suppress.suppress_prefixlen = 0
        var mark = weir_rule()
        mark.family = UInt8(family)
        mark.protocol = routeProtocol
        mark.priority = markPriority
        mark.table = table
        mark.fwmark = table
        mark.fwmask = 0xFFFF_FFFF
        mark.invert = 1
        mark.suppress_prefixlen = -1
        return [suppress, mark]
    }

    /// Takes the host's full-tunnel rules (protocol 88 at weir's two priorities) to `wanted`.
    @discardableResult
    static func convergeRules(_ wanted: [weir_rule]) throws -> [String] {
        func key(_ rule: weir_rule) -> [UInt64] {
            [UInt64(rule.family), UInt64(rule.priority), UInt64(rule.table), UInt64(rule.fwmark), UInt64(rule.invert), UInt64(bitPattern: Int64(rule.suppress_prefixlen))]
        }
        var changes: [String] = []
        var installed: [weir_rule] = []
        for family in [AF_INET, AF_INET6] {
            var rules: UnsafeMutablePointer<weir_rule>?
            var count = 0
            try check(weir_rule_list(UInt8(family), routeProtocol, &rules, &count))
            defer { free(rules) }
            installed += (0..<count).map { rules![$0] }.filter { $0.priority == suppressPriority || $0.priority == markPriority }
        }
        let wantedKeys = Set(wanted.map(key)), installedKeys = Set(installed.map(key))
        for var rule in installed where !wantedKeys.contains(key(rule)) {
            try check(weir_rule_delete(&rule))
            changes.append("rule \(rule.priority) (table \(rule.table)) removed")
        }
        for var rule in wanted where !installedKeys.contains(key(rule)) {
            try check(weir_rule_add(&rule))
            changes.append("rule \(rule.priority) (table \(rule.table)) added")
        }
        return changes
    }

    private static func route(_ network: IPNetwork, table: UInt32, ifindex: Int32) -> weir_route {
        var route = weir_route()
        route.family = UInt8(network.isIPv4 ? AF_INET : AF_INET6)
        route.prefix_len = UInt8(network.prefix)
        withUnsafeMutableBytes(of: &route.destination) { $0.copyBytes(from: network.bytes) }
        route.table = table
        route.protocol = routeProtocol
        route.oif = ifindex
        return route
    }
}
