import WeirCore

/// `route.gateway`: the host side of an egress gateway. Public destinations go via the gateway; private,
/// loopback, link-local and other non-public ranges keep their routes.
public struct RouteGatewayConfig: StageConfig {
    public static let type = "route.gateway"
    public static let summary = "Route public destination ranges via a gateway; private ranges stay local."
    public static let role = StageRole.service
    public static let options = [
        OptionDoc("via", "IPv4 address", "Gateway for public IPv4 destinations (this or via6 is required)."),
        OptionDoc("via6", "IPv6 address", "Gateway for public IPv6 destinations."),
        OptionDoc("table", "1-4294967295", default: "254 (main)", "Routing table to install the routes in."),
        OptionDoc("keep_local", "[network]", default: "[]", "More ranges that keep their routes, besides the non-public ones."),
    ]
    public static var sample: String { String(decoding: PackageResources.route_gateway_sample_yaml, as: UTF8.self) }

    public let via: IPNetwork?
    public let via6: IPNetwork?
    public let table: UInt32
    public let keepLocal: [IPNetwork]

    public static func decode(_ options: ConfigMapping) -> RouteGatewayConfig? {
        func gateway(_ key: String, ipv4: Bool) -> IPNetwork?? {
            options.optional(key, default: IPNetwork?.none) { value in
                guard let network = value.parsed(IPNetwork.parse) else { return nil }
                guard network.isSingleAddress, network.isIPv4 == ipv4 else {
                    value.error("an \(ipv4 ? "IPv4" : "IPv6") address, not \(network)")
                    return nil
                }
                return .some(network)
            }
        }
        let via = gateway("via", ipv4: true)
        let via6 = gateway("via6", ipv4: false)
        let table = options.optional("table", default: 254) { $0.int(in: 1...Int(UInt32.max)) }
        let keepLocal = options.optional("keep_local", default: [IPNetwork]()) { value in
            value.sequence.flatMap { items in
                let networks = items.compactMap { $0.parsed(IPNetwork.parse) }
                return networks.count == items.count ? networks : nil
            }
        }
        guard let via, let via6, let table, let keepLocal else { return nil }
        if via == nil, via6 == nil {
            options.value.error("route.gateway needs via: (IPv4) or via6: (IPv6)")
            return nil
        }
        return RouteGatewayConfig(via: via, via6: via6, table: UInt32(table), keepLocal: keepLocal)
    }

    public func makeStage(_ context: StageContext) -> any Stage { RouteGateway(config: self, pipeline: context.pipeline) }

    public static func sweep(keeping pipelines: Set<String>, environment: StageEnvironment) async -> [String] {
        // Routes in tables no running stage uses: the stage was removed, or moved to another table, while
        // the agent was down (or killed between the new table's start and the old one's retirement).
        RouteGateway.removeUnusedTables()
        return []
    }

    /// The routes the stage wants: every public range of each configured family, via its gateway.
    var routes: [GatewayRoute] {
        var result: [GatewayRoute] = []
        for (gateway, whole) in [(via, "0.0.0.0/0"), (via6, "::/0")] {
            guard let gateway else { continue }
            let local = IPNetwork.nonPublic + keepLocal + [IPNetwork(bytes: gateway.bytes, prefix: gateway.width)]
            for range in IPNetwork.subtract(local, from: try! IPNetwork.parse(whole)) {
                result.append(GatewayRoute(destination: range, gateway: gateway, table: table))
            }
        }
        return result
    }
}

struct GatewayRoute: Hashable, Sendable, CustomStringConvertible {
    var destination: IPNetwork
    var gateway: IPNetwork
    var table: UInt32

    var description: String { "\(destination) via \(gateway.address) table \(table)" }
}
