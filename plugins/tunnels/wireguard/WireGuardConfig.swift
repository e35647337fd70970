import WeirCore
import WeirVPN

/// `wireguard`: a WireGuard interface with its peers, kept exactly as configured (like `wg syncconf`, plus
/// addresses), with addresses for peers from a pool and key pairs for peers the agent generates.
public struct WireGuardConfig: StageConfig, NamesPeers {
    public enum Backend: String, Sendable, CaseIterable {
        case auto, kernel, userspace
    }

    public static let type = "wireguard"
    public static let summary = "A WireGuard interface and its peers (VPN server or client), reconciled to the configuration."
    public static let role = StageRole.service
    public static let options = [
        OptionDoc("interface", "name", "The WireGuard interface Weir creates and owns, e.g. wg0."),
        OptionDoc("listen_port", "port", default: "51820", "UDP port the interface listens on (0: any, for clients)."),
        OptionDoc("endpoint", "host:port", "What clients dial, written into exported client configurations."),
        OptionDoc("addresses", "[address/prefix]", default: "[]", "The interface's own addresses, IPv4 and IPv6 (10.8.0.1/24)."),
        OptionDoc("mtu", "bytes", default: "1420", "The interface's MTU."),
        OptionDoc("fwmark", "number", default: "0", "Mark on the tunnel's own UDP packets (for policy routing)."),
        OptionDoc("private_key_file", "path", default: "state_dir/wireguard/PIPELINE.key, generated", "The interface's private key (base64)."),
        OptionDoc(
            "private_key", "base64", default: "none", secret: true,
            "The interface's private key itself, instead of private_key_file (the coordinator's VPN servers render it)."),
        OptionDoc("pool", "[network]", default: "[]", "Where peers without allowed_ips get their address (one IPv4 and/or one IPv6)."),
        OptionDoc("backend", "auto|kernel|userspace", default: "auto", "The kernel module, or wireguard-go where the module is missing."),
        OptionDoc("reconcile_interval", "duration", default: "10s", "How often the device is compared with the configuration and put back."),
        OptionDoc("max_purge_share", "0-1", default: "0.5", "Peers on the device the configuration does not have are removed, unless they are more than this share of them."),
        OptionDoc(
            "peers", "[peer]", default: "[]",
            "name, public_key (generated when absent), preshared_key_file, allowed_ips, endpoints, persistent_keepalive, failover_after, quota {limit, period}."),
    ]
    public static var sample: String { String(decoding: PackageResources.wireguard_sample_yaml, as: UTF8.self) }

    public struct Peer: Sendable, Equatable {
        public var name: String
        /// nil: the agent generates the peer's key pair (and can export its client configuration).
        public var publicKey: String?
        public var presharedKeyFile: String?
        /// Empty: one address from the pool per family.
        public var allowedIPs: [IPNetwork]
        /// Several: the next is tried when no handshake succeeds (client failover); the first is preferred.
        public var endpoints: [HostPort]
        public var persistentKeepalive: Int
        /// With several `endpoints`: how long the peer may stay silent (no handshake, nothing received)
        /// before the next endpoint is tried.
        public var failoverAfter: Duration = .seconds(150)
        /// Bytes (received + sent) the peer may transfer per period; past it the peer is taken off the
        /// device (kept in state) until the period resets or the quota is raised.
        public var quota: Quota?
    }

    public struct Quota: Sendable, Equatable {
        public enum Period: String, Sendable, CaseIterable {
            case day, week, month
        }

        public var limit: UInt64
        public var period: Period
    }

    public var interface: String
    public var listenPort: Int
    public var endpoint: HostPort?
    public var addresses: [InterfaceAddress]
    public var mtu: Int
    public var fwmark: UInt32
    public var privateKeyFile: String?
    /// Given inline (rendered by the coordinator); excludes `privateKeyFile`.
    public var privateKey: WireGuardKey?
    public var pool: [IPNetwork]
    public var backend: Backend
    public var reconcileInterval: Duration
    public var maxPurgeShare: Double
    public var peers: [Peer]

    public static func decode(_ options: ConfigMapping) -> WireGuardConfig? {
        let interface = options.required("interface").flatMap { value -> String? in
            guard let name = value.string else { return nil }
            guard (1...15).contains(name.utf8.count), name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                value.error("not an interface name: \"\(name)\"")
                return nil
            }
            return name
        }
        let listenPort = options.optional("listen_port", default: 51820) { $0.int(in: 0...65535) }
        let endpoint = options.optional("endpoint", default: HostPort?.none) { value in value.parsed(HostPort.parse).map { .some($0) } }
        let addresses = options.optional("addresses", default: [InterfaceAddress]()) { list($0) { $0.parsed(InterfaceAddress.parse) } }
        let mtu = options.optional("mtu", default: 1420) { $0.int(in: 1280...9000) }
        let fwmark = options.optional("fwmark", default: 0) { $0.int(in: 0...Int(UInt32.max)) }
        let privateKeyFile = options.optional("private_key_file", default: String?.none) { value in value.absolutePath.map { .some($0) } }
        let privateKey = options.optional("private_key", default: WireGuardKey?.none) { value -> WireGuardKey?? in
            guard let text = value.string else { return nil }
            guard let key = WireGuardKey(base64: text) else {
                value.error("not a WireGuard key (32 bytes, base64)")
                return nil
            }
            return .some(key)
        }
        let pool = options.optional("pool", default: [IPNetwork]()) { list($0) { $0.parsed(IPNetwork.parse) } }
        let backend = options.optional("backend", default: Backend.auto) { $0.oneOf(Backend.self) }
        let interval = options.optional("reconcile_interval", default: Duration.seconds(10)) { $0.duration(atLeast: .seconds(1)) }
        let share = options.optional("max_purge_share", default: 0.5) { value -> Double? in
            guard let text = value.string, let share = Double(text), (0...1).contains(share) else {
                value.error("a share between 0 and 1")
                return nil
            }
            return share
        }
        let peers = options.optional("peers", default: [Peer]()) { value -> [Peer]? in
            guard let items = value.sequence else { return nil }
            let peers = items.compactMap(decodePeer)
            guard peers.count == items.count else { return nil }
            var seen: Set<String> = []
            for (item, peer) in zip(items, peers) where !seen.insert(peer.name).inserted {
                item.error("peer \"\(peer.name)\" is listed twice")
                return nil
            }
            return peers
        }
        guard let interface, let listenPort, let endpoint, let addresses, let mtu, let fwmark, let privateKeyFile, let privateKey, let pool,
            let backend, let interval, let share, let peers
        else { return nil }
        if privateKey != nil, privateKeyFile != nil {
            (options.optional("private_key") ?? options.value).error("give private_key or private_key_file, not both")
            return nil
        }
        if peers.contains(where: { $0.allowedIPs.isEmpty }) && pool.isEmpty {
            (options.optional("peers") ?? options.value).error("peers without allowed_ips need a pool to take their addresses from")
            return nil
        }
        return WireGuardConfig(
            interface: interface, listenPort: listenPort, endpoint: endpoint, addresses: addresses, mtu: mtu, fwmark: UInt32(fwmark),
            privateKeyFile: privateKeyFile, privateKey: privateKey, pool: pool, backend: backend, reconcileInterval: interval, maxPurgeShare: share, peers: peers)
    }

    private static func decodePeer(_ value: ConfigValue) -> Peer? {
        guard let map = value.mapping else { return nil }
        let name = map.required("name").flatMap { value -> String? in
            guard let name = value.string else { return nil }
            guard PeerNames.isValid(name) else {
                value.error("a peer name is 1-64 letters, digits, - _ . @")
                return nil
            }
            return name
        }
        let publicKey = map.optional("public_key", default: String?.none) { value -> String?? in
            guard let text = value.string else { return nil }
            guard WireGuardKey(base64: text) != nil else {
                value.error("not a WireGuard key (32 bytes, base64)")
                return nil
            }
            return .some(text)
        }
        let presharedKeyFile = map.optional("preshared_key_file", default: String?.none) { value in value.absolutePath.map { .some($0) } }
        let allowedIPs = map.optional("allowed_ips", default: [IPNetwork]()) { list($0) { $0.parsed(IPNetwork.parse) } }
        let endpoints = map.optional("endpoints", default: [HostPort]()) { value in
            // Names are resolved at every converge (see WireGuard.deviceEndpoint).
            list(value) { $0.parsed(HostPort.parse) }
        }
        let keepalive = map.optional("persistent_keepalive", default: 0) { $0.int(in: 0...65535) }
        let quota = map.optional("quota", default: Quota?.none) { value -> Quota?? in
            guard let quota = value.mapping else { return nil }
            let limit = quota.required("limit").flatMap { $0.parsed(ByteSizeParser.parse) }
            let period = quota.optional("period", default: Quota.Period.month) { $0.oneOf(Quota.Period.self) }
            guard let limit, let period else { return nil }
            return .some(Quota(limit: UInt64(limit), period: period))
        }
        let failoverAfter = map.optional("failover_after", default: Duration.seconds(150)) { $0.duration(atLeast: .seconds(1)) }
        guard let name, let publicKey, let presharedKeyFile, let allowedIPs, let endpoints, let keepalive, let quota, let failoverAfter else {
            return nil
        }
        return Peer(
            name: name, publicKey: publicKey, presharedKeyFile: presharedKeyFile, allowedIPs: allowedIPs, endpoints: endpoints,
            persistentKeepalive: keepalive, failoverAfter: failoverAfter, quota: quota)
    }

    private static func list<T>(_ value: ConfigValue, _ read: (ConfigValue) -> T?) -> [T]? {
        guard let items = value.sequence else { return nil }
        let read = items.compactMap(read)
        return read.count == items.count ? read : nil
    }

    public var peerNames: [String] { peers.map(\.name) }

    public func exclusiveClaims(listener: (any ListenerConfig)?) -> [StageClaim] {
        [StageClaim(key: "wireguard \(interface)", description: "the WireGuard interface \(interface)", reason: "one stage owns an interface")]
    }

    public func makeStage(_ context: StageContext) -> any Stage { WireGuard(config: self, context: context) }

    public static func sweep(keeping pipelines: Set<String>, environment: StageEnvironment) async -> [String] {
        WireGuardState.sweep(keeping: pipelines, stateDirectory: environment.stateDirectory)
        return []
    }
}

/// An address of an interface with its prefix: 10.8.0.1/24 (the host bits matter).
public struct InterfaceAddress: Sendable, Hashable, CustomStringConvertible {
    public var address: IPNetwork
    public var prefix: Int

    public var description: String { "\(address.address)/\(prefix)" }
    /// The network it is on.
    public var network: IPNetwork { IPNetwork(bytes: address.bytes, prefix: prefix) }

    public static func parse(_ text: String) throws -> InterfaceAddress {
        let parts = text.split(separator: "/", maxSplits: 1).map(String.init)
        let address = try IPNetwork.parse(parts[0])
        guard address.isSingleAddress else { throw ParseError(description: "an address, not a network: \(text)") }
        let prefix = parts.count == 2 ? Int(parts[1]) : address.width
        guard let prefix, (0...address.width).contains(prefix) else { throw ParseError(description: "bad prefix length in \(text)") }
        return InterfaceAddress(address: address, prefix: prefix)
    }

    struct ParseError: Error, CustomStringConvertible {
        let description: String
    }
}
