import WeirCore

/// `count.ebpf`: per-IP byte and packet counters, counted by eBPF programs at tc ingress and egress and
/// exported as `weir_ip_bytes_total` / `weir_ip_packets_total`.
public struct CountEBPFConfig: StageConfig {
    /// Which address of a packet an entry is counted under.
    public enum Key: String, Sendable, CaseIterable {
        case remoteIP = "remote_ip"
        case localIP = "local_ip"
    }

    /// How programs are attached: tcx links (Linux 6.6+) or clsact filters; `auto` prefers tcx.
    public enum AttachMode: String, Sendable, CaseIterable {
        case auto, tcx, clsact
    }

    public static let type = "count.ebpf"
    public static let summary = "Count bytes and packets per IP address in the kernel (eBPF at tc ingress/egress)."
    public static let role = StageRole.service
    public static let options = [
        OptionDoc(
            "interfaces", "[name]", default: "the listener's interfaces",
            "Interfaces to count on, ingress and egress. Without it the stage must sit in a forward pipeline and counts that listener's clients."),
        OptionDoc("key", "remote_ip|local_ip", default: "remote_ip", "Count each packet under its remote (peer) or local address."),
        OptionDoc("ipv4_prefix", "1-32", default: "32", "Roll IPv4 addresses up to this prefix length (24 counts per /24)."),
        OptionDoc("ipv6_prefix", "1-128", default: "128", "Roll IPv6 addresses up to this prefix length (64 counts per /64)."),
        OptionDoc("max_entries", "count", default: "65536", "Size of the LRU map: the least recently seen entries are evicted beyond it."),
        OptionDoc("top_n", "count", default: "1000", "Export this many addresses with the most bytes; the rest are summed into ip=\"other\"."),
        OptionDoc("attach", "auto|tcx|clsact", default: "auto", "tcx links where the kernel has them, else clsact filters."),
    ]
    public static var sample: String { String(decoding: PackageResources.count_ebpf_sample_yaml, as: UTF8.self) }

    public let interfaces: [String]
    public let key: Key
    public let ipv4Prefix: Int
    public let ipv6Prefix: Int
    public let maxEntries: Int
    public let topN: Int
    public let attach: AttachMode

    public static func decode(_ options: ConfigMapping) -> CountEBPFConfig? {
        let interfaces = options.optional("interfaces", default: [String]()) { value in
            guard let items = value.sequence else { return nil }
            if items.isEmpty { value.error("list at least one interface, or leave the key out") }
            let names = items.compactMap { item -> String? in
                guard let name = item.string else { return nil }
                // IFNAMSIZ is 16 with the terminating zero.
                guard (1...15).contains(name.utf8.count), !name.contains("/"), !name.contains(where: \.isWhitespace) else {
                    item.error("not an interface name: \"\(name)\"")
                    return nil
                }
                return name
            }
            return names.count == items.count && !items.isEmpty ? names : nil
        }
        let key = options.optional("key", default: Key.remoteIP) { $0.oneOf(Key.self) }
        let ipv4Prefix = options.optional("ipv4_prefix", default: 32) { $0.int(in: 1...32) }
        let ipv6Prefix = options.optional("ipv6_prefix", default: 128) { $0.int(in: 1...128) }
        let maxEntries = options.optional("max_entries", default: 65536) { $0.int(in: 64...(1 << 24)) }
        let topN = options.optional("top_n", default: 1000) { $0.int(in: 1...(1 << 24)) }
        let attach = options.optional("attach", default: AttachMode.auto) { $0.oneOf(AttachMode.self) }
        guard let interfaces, let key, let ipv4Prefix, let ipv6Prefix, let maxEntries, let topN, let attach else { return nil }
        return CountEBPFConfig(
            interfaces: interfaces, key: key, ipv4Prefix: ipv4Prefix, ipv6Prefix: ipv6Prefix, maxEntries: maxEntries,
            topN: topN, attach: attach)
    }

    public func placementError(listener: (any ListenerConfig)?) -> String? {
        guard interfaces.isEmpty else { return nil }
        guard let listener else {
            return "interfaces: required in a pipeline without a listen.* stage (or place the stage in a forward pipeline to count its clients)"
        }
        if listener.bindAddress.port == 0 { return "cannot count the clients of a listener on port 0; list interfaces instead" }
        return nil
    }

    public func makeStage(_ context: StageContext) -> any Stage { CountEBPF(config: self, context: context) }

    /// Pins of pipelines that no longer count (removed while the agent was stopped) are removed.
    public static func sweep(keeping pipelines: Set<String>, environment: StageEnvironment) async -> [String] {
        PinDirectory.sweep(root: environment.bpfPinDirectory, keeping: pipelines)
        return []
    }

    /// What the pinned counters mean; a map can only be carried over to one with the same meaning.
    var meaning: String { "\(key.rawValue)-\(ipv4Prefix)-\(ipv6Prefix)" }
}
