import Foundation
import WeirCore

/// `enforce.nftables`: the kernel firewall of a pipeline — destination and source allowlists, access
/// profiles, NAT, DNS hijack and marks — kept in Weir's own nftables table.
public struct EnforceNftablesConfig: StageConfig {
    public static let type = "enforce.nftables"
    public static let summary = "Enforce allowlists, access profiles, NAT, DNS hijack and marks in the kernel (nftables)."
    public static let role = StageRole.service
    public static let options = [
        OptionDoc("allow_destinations", "mapping", "Egress allowlist: only these IPs, networks and domains may be forwarded or sent out of `interfaces`."),
        OptionDoc("allow_sources", "[network]", "Forward pipelines: only these client networks reach the listener's port."),
        OptionDoc(
            "profiles", "[{source|peer, profile}]",
            "Access profile per source address or network, or per wireguard peer name: full, internet_only, intranet_only or a custom one."),
        OptionDoc("custom_profiles", "mapping", "Named profiles: lists of {destination, protocol, ports} that are allowed; all else is dropped."),
        OptionDoc("masquerade", "[{source, out_interface}]", "Source NAT to the outgoing interface's address."),
        OptionDoc(
            "dns_hijack", "mapping",
            "Send DNS (port 53) from `sources` to `resolver` (an address, or the name of a dns.filter pipeline of this agent); block known DNS-over-HTTPS/TLS endpoints."),
        OptionDoc("marks", "[{mark, source, destination, protocol, ports}]", "Set packet and connection marks for tc classes."),
    ]
    public static var sample: String { String(decoding: PackageResources.enforce_nftables_sample_yaml, as: UTF8.self) }

    public var destinations: DestinationAllowlist?
    public var sources: [IPNetwork]
    public var profiles: [ProfileAssignment]
    public var customProfiles: [String: [ProfileRule]]
    public var masquerade: [Masquerade]
    public var dnsHijack: DNSHijack?
    public var marks: [MarkRule]

    /// The stage's YAML names its lists; their content counts too, so a reload applies a list's new entries.
    public var contentFingerprint: String { destinations?.listsFingerprint ?? "" }

    /// One entry of the destination allowlist.
    public struct DestinationEntry: Sendable, Hashable {
        public enum Target: Sendable, Hashable {
            case network(IPNetwork)
            case domain(String)
        }
        public var target: Target
        /// Private and other non-public addresses are accepted (for a literal) or kept (when a domain resolves to them).
        public var allowPrivate: Bool
        /// A reload that omits the entry keeps it; clear the flag first to remove it.
        public var protected: Bool

        public var text: String {
            switch target {
            case .network(let network): return network.description
            case .domain(let name): return name
            }
        }
    }

    public struct DestinationAllowlist: Sendable {
        public var interfaces: [String]
        public var entries: [DestinationEntry]
        /// DNS servers for the domains, `ip` or `ip:port`; empty = the nameservers of /etc/resolv.conf.
        public var resolvers: [HostPort]
        public var resolveInterval: Duration
        /// Answers are never re-asked sooner than this, whatever their TTL.
        public var minimumTTL: Duration
        /// Per-address counters, exported as weir_nft_allowed_bytes_total.
        public var countElements: Bool
        /// Capacity of each address set; a resolution that would exceed it is refused by the kernel and not applied.
        public var maxElements: Int
        /// The named lists `entries` came from (with their content), so editing a list changes the stage.
        public var listsFingerprint: String = ""
        /// Answers of dns.filter pipelines whose addresses are allowed to the clients that asked.
        public var followed: [FollowedDNS] = []
        /// How long a followed address outlives its answer's TTL (while no connection to it lives).
        public var followGrace: Duration = .seconds(60)
        /// The upstreams of the followed dns.filters: their queries leave through `interfaces` too.
        public var followedUpstreams: [HostPort] = []
    }

    public enum Profile: Sendable, Hashable {
        case full, internetOnly, intranetOnly
        case custom(String)

        public var name: String {
            switch self {
            case .full: return "full"
            case .internetOnly: return "internet_only"
            case .intranetOnly: return "intranet_only"
            case .custom(let name): return name
            }
        }
    }

    public struct ProfileAssignment: Sendable, Hashable {
        /// Whose traffic: a source address or network, or a peer named by the pipeline's `wireguard` stage
        /// (its tunnel addresses, looked up when the stage starts and reconciles).
        public enum Subject: Sendable, Hashable {
            case source(IPNetwork)
            case peer(String)
        }

        public var subject: Subject
        public var profile: Profile
    }

    public enum TransportProtocol: String, Sendable, CaseIterable {
        case tcp, udp, any
    }

    public struct ProfileRule: Sendable, Hashable {
        public var destination: IPNetwork?
        public var transport: TransportProtocol
        public var ports: [Int]
    }

    public struct Masquerade: Sendable, Hashable {
        public var source: IPNetwork
        public var outInterface: String
    }

    public struct DNSHijack: Sendable {
        public var sources: [IPNetwork]
        /// Where DNS goes: an address, or nil for this host's own address on the interface the query came in
        /// (a dns.filter listening on every address).
        public var resolver: IPNetwork?
        public var port: Int
        /// `resolver:` named a dns.filter pipeline of this agent; `resolver` and `port` come from its `listen`.
        public var resolverPipeline: String?
        public var blockDoH: Bool
        public var extraDoHEndpoints: [IPNetwork]
    }

    /// `allow_destinations` entry `{domains_from: PIPELINE}`: the addresses that the dns.filter of PIPELINE
    /// answers are allowed — to the client that asked, for the answer's TTL plus `follow_grace`, and for as
    /// long as its connections to them live.
    public struct FollowedDNS: Sendable, Hashable {
        public var pipeline: String
        /// Only answers for these names (each with its subdomains); empty: every answer.
        public var domains: [String]
        /// Only answers to clients of these groups of the dns.filter (`default` for the stage's own); empty: all.
        public var groups: [String]
        /// Private and other non-public addresses in answers are followed too (else left out: DNS rebinding).
        public var allowPrivate: Bool

        /// Whether an answer for `name` to a client of `group` (nil: the default group) is followed.
        public func follows(name: String, group: String?) -> Bool {
            if !groups.isEmpty, !groups.contains(group ?? "default") { return false }
            if domains.isEmpty { return true }
            return domains.contains { name == $0 || name.hasSuffix("." + $0) }
        }
    }

    public struct MarkRule: Sendable, Hashable {
        public var mark: UInt32
        public var source: IPNetwork?
        public var destination: IPNetwork?
        public var transport: TransportProtocol
        public var ports: [Int]
    }

    // MARK: - Decoding

    public static func decode(_ options: ConfigMapping) -> EnforceNftablesConfig? {
        var ok = true
        func need<T>(_ value: T?) -> T? {
            if value == nil { ok = false }
            return value
        }
        let destinations = options.optional("allow_destinations").map { need(decodeDestinations($0)) } ?? nil
        let sources = options.optional("allow_sources", default: [IPNetwork]()) { networks($0) }
        let profiles = options.optional("profiles", default: [ProfileAssignment]()) { value in
            value.sequence.flatMap { items in all(items.map(decodeProfile)) }
        }
        let customProfiles = options.optional("custom_profiles", default: [String: [ProfileRule]]()) { value in
            guard let map = value.mapping else { return nil }
            var result: [String: [ProfileRule]] = [:]
            var good = true
            for (name, _, rules) in map.allEntries() {
                if ["full", "internet_only", "intranet_only"].contains(name) {
                    rules.error("\"\(name)\" is a built-in profile")
                    good = false
                }
                guard let items = rules.sequence, let decoded = all(items.map(decodeProfileRule)) else {
                    good = false
                    continue
                }
                result[name] = decoded
            }
            return good ? result : nil
        }
        let masquerade = options.optional("masquerade", default: [Masquerade]()) { value in
            value.sequence.flatMap { items in all(items.map(decodeMasquerade)) }
        }
        let dnsHijack = options.optional("dns_hijack").map { need(decodeDNSHijack($0)) } ?? nil
        let marks = options.optional("marks", default: [MarkRule]()) { value in
            value.sequence.flatMap { items in all(items.map(decodeMark)) }
        }
        guard ok, let sources, let profiles, let customProfiles, let masquerade, let marks else { return nil }

        // Profiles must name a built-in or custom profile.
        var known = true
        for (index, assignment) in profiles.enumerated() {
            if case .custom(let name) = assignment.profile, customProfiles[name] == nil {
                options.optional("profiles")?.sequence?[index].mapping?.optional("profile")?
                    .error("unknown profile \"\(name)\" (built in: full, internet_only, intranet_only; custom: \(customProfiles.keys.sorted().joined(separator: ", ")))")
                known = false
            }
        }
        let config = EnforceNftablesConfig(
            destinations: destinations, sources: sources, profiles: profiles, customProfiles: customProfiles,
            masquerade: masquerade, dnsHijack: dnsHijack, marks: marks)
        if config.isEmpty {
            options.value.error("enforce.nftables needs at least one of: \(Self.options.map(\.name).joined(separator: ", "))")
            return nil
        }
        return known ? config : nil
    }

    var isEmpty: Bool {
        destinations == nil && sources.isEmpty && profiles.isEmpty && masquerade.isEmpty && dnsHijack == nil && marks.isEmpty
    }

    public func placementError(listener: (any ListenerConfig)?) -> String? {
        if !sources.isEmpty, listener == nil {
            return "allow_sources: needs a listen.* stage in the pipeline (it guards the listener's port)"
        }
        if !sources.isEmpty, let listener, listener.bindAddress.port == 0 {
            return "allow_sources: cannot guard a listener on port 0"
        }
        return nil
    }

    /// Peer names refer to the peers of a `wireguard` stage in the same pipeline.
    public func pipelineError(stages: [any StageConfig]) -> String? {
        let named = profiles.compactMap { assignment -> String? in
            if case .peer(let name) = assignment.subject { return name }
            return nil
        }
        return PeerNames.unknownError(named, in: stages, what: "profiles")
    }

    /// The peers named in profiles.
    var profilePeers: [String] {
        profiles.compactMap { assignment in
            if case .peer(let name) = assignment.subject { return name }
            return nil
        }
    }

    /// Each allowlist drops what it does not list on its interfaces, so two on one interface drop each
    /// other's destinations: everything is blocked.
    public func exclusiveClaims(listener: (any ListenerConfig)?) -> [StageClaim] {
        (destinations?.interfaces ?? []).map { interface in
            StageClaim(
                key: "enforce.nftables allow_destinations \(interface)", description: "the egress allowlist of \(interface)",
                reason: "two allowlists on one interface drop each other's destinations; list them in one stage, or in a named list both pipelines' entries come from")
        }
    }

    public func makeStage(_ context: StageContext) -> any Stage { EnforceNftables(config: self, context: context) }

    /// A pipeline whose stage was removed while the agent was stopped keeps its objects when it holds protected
    /// entries, as a reload that removes it is refused: protected entries stay in force until released
    /// (listed with `protected: false` and reloaded). Other leftovers go, state files included.
    public static func sweep(keeping pipelines: Set<String>, environment: StageEnvironment) async -> [String] {
        let directory = environment.stateDirectory + "/nftables"
        StateFiles.removeInterruptedWrites(in: directory)
        var retained: [String: [String]] = [:]
        for name in StateFiles.names(in: directory) where !pipelines.contains(name) {
            let protected = SavedState.load("\(directory)/\(name).json").protected.map(\.entry)
            if protected.isEmpty {
                try? FileManager.default.removeItem(atPath: "\(directory)/\(name).json")
            } else {
                retained[name] = protected
            }
        }
        NftablesTable.shared.sweep(keeping: pipelines.union(retained.keys))
        return retained.sorted { $0.key < $1.key }.map { name, entries in
            EnforceNftables.retainedMessage(pipeline: name, entries: entries)
        }
    }

    // MARK: - Pieces

    private static func all<T>(_ values: [T?]) -> [T]? {
        let present = values.compactMap { $0 }
        return present.count == values.count ? present : nil
    }

    static func network(_ value: ConfigValue) -> IPNetwork? {
        value.parsed(IPNetwork.parse)
    }

    static func networks(_ value: ConfigValue) -> [IPNetwork]? {
        if value.isScalar { return network(value).map { [$0] } }
        guard let items = value.sequence else { return nil }
        return all(items.map(network))
    }

    static func interfaceName(_ value: ConfigValue) -> String? {
        guard let name = value.string else { return nil }
        guard (1...15).contains(name.utf8.count), !name.contains("/"), !name.contains(where: \.isWhitespace) else {
            value.error("not an interface name: \"\(name)\"")
            return nil
        }
        return name
    }

    static func ports(_ value: ConfigValue) -> [Int]? {
        if value.isScalar { return value.int(in: 1...65535).map { [$0] } }
        guard let items = value.sequence, !items.isEmpty else {
            value.error("list one or more ports")
            return nil
        }
        return all(items.map { $0.int(in: 1...65535) })
    }

    private static func decodeDestinations(_ value: ConfigValue) -> DestinationAllowlist? {
        guard let map = value.mapping else { return nil }
        let interfaces = map.required("interfaces").flatMap { value -> [String]? in
            guard let items = value.sequence else { return nil }
            if items.isEmpty { value.error("list at least one interface") }
            return items.isEmpty ? nil : all(items.map(interfaceName))
        }
        // Entries of its own, named lists (`lists:` sections of any file), or both.
        let listNames = map.optional("lists").flatMap { value -> [ConfigValue]? in value.sequence }
        let ownEntries = listNames == nil ? map.required("entries") : map.optional("entries")
        var followed: [FollowedDNS]? = []
        var entries = ownEntries.flatMap { value -> [DestinationEntry]? in
            guard let items = value.sequence else { return nil }
            let following = items.filter { $0.hasKey("domains_from") }
            followed = all(following.map(decodeFollowed))
            return all(items.filter { !$0.hasKey("domains_from") }.map(decodeDestinationEntry))
        } ?? (ownEntries == nil ? [] : nil)
        var listsFingerprint = ""
        for item in listNames ?? [] {
            guard let name = item.string, let list = item.namedList(name), let items = list.sequence,
                let decoded = all(items.map(decodeDestinationEntry))
            else {
                entries = nil
                continue
            }
            entries? += decoded
            listsFingerprint += "\(name)=\(list.node.fingerprint);"
        }
        let resolvers = map.optional("resolvers", default: [HostPort]()) { value in
            value.sequence.flatMap { items in
                all(items.map { item in item.parsed { text in try HostPort.parse(text, defaultPort: 53) } })
            }
        }
        let interval = map.optional("resolve_interval", default: Duration.seconds(60)) { $0.parsed(DurationParser.parse) }
        let minimumTTL = map.optional("min_ttl", default: Duration.seconds(10)) { $0.parsed(DurationParser.parse) }
        let count = map.optional("count_elements", default: false) { $0.bool }
        let maxElements = map.optional("max_elements", default: 65536) { $0.int(in: 1...(1 << 24)) }
        let grace = map.optional("follow_grace", default: Duration.seconds(60)) { $0.duration(atLeast: .zero) }
        map.finish()
        guard let interfaces, let entries, let followed, let resolvers, let interval, let minimumTTL, let count, let maxElements, let grace else {
            return nil
        }
        if Set(followed.map(\.pipeline)).count != followed.count {
            map.optional("entries")?.error("each dns.filter pipeline is followed by one entry (list its domains and groups together)")
            return nil
        }
        let literals = entries.filter { if case .network(let n) = $0.target { return n.isSingleAddress } else { return false } }
        if literals.count > maxElements {
            map.optional("max_elements")?.error("\(literals.count) addresses do not fit in max_elements \(maxElements)")
            return nil
        }
        return DestinationAllowlist(
            interfaces: interfaces, entries: entries, resolvers: resolvers, resolveInterval: interval, minimumTTL: minimumTTL,
            countElements: count, maxElements: maxElements, listsFingerprint: listsFingerprint, followed: followed, followGrace: grace)
    }

    private static func decodeDestinationEntry(_ value: ConfigValue) -> DestinationEntry? {
        var text: String?
        var allowPrivate = false
        var protected = false
        var at = value
        if !value.isMapping {
            text = value.string
        } else if let map = value.mapping {
            let address = map.optional("address")
            let domain = map.optional("domain")
            allowPrivate = map.optional("allow_private", default: false) { $0.bool } ?? false
            protected = map.optional("protected", default: false) { $0.bool } ?? false
            map.finish()
            switch (address, domain) {
            case (let a?, nil): text = a.string; at = a
            case (nil, let d?): text = d.string; at = d
            default:
                value.error("an entry has either address: or domain:")
                return nil
            }
        }
        guard let text else { return nil }
        if let network = try? IPNetwork.parse(text) {
            if !allowPrivate, !network.isPublic {
                at.error("\(network) is not a public address; add allow_private: true to allow it")
                return nil
            }
            return DestinationEntry(target: .network(network), allowPrivate: allowPrivate, protected: protected)
        }
        if text.contains("/") || IPNetwork.addressBytes(text.split(separator: "/").first.map(String.init) ?? "") != nil {
            _ = at.parsed(IPNetwork.parse)  // reports why
            return nil
        }
        guard let name = DomainName.normalized(text) else {
            at.error("\"\(text)\" is neither an IP address, a network nor a domain name")
            return nil
        }
        return DestinationEntry(target: .domain(name), allowPrivate: allowPrivate, protected: protected)
    }

    private static func decodeProfile(_ value: ConfigValue) -> ProfileAssignment? {
        guard let map = value.mapping else { return nil }
        let source = map.optional("source").map(network)
        let peer = map.optional("peer").map { $0.string }
        if source == nil, peer == nil { map.value.error("a profile needs source: (an address or network) or peer: (a wireguard peer's name)") }
        if source != nil, peer != nil { map.value.error("a profile names source: or peer:, not both") }
        let profile = map.required("profile")?.string.map { name -> Profile in
            switch name {
            case "full": return .full
            case "internet_only": return .internetOnly
            case "intranet_only": return .intranetOnly
            default: return .custom(name)
            }
        }
        map.finish()
        guard let profile else { return nil }
        switch (source, peer) {
        case (.some(.some(let network)), nil): return ProfileAssignment(subject: .source(network), profile: profile)
        case (nil, .some(.some(let name))): return ProfileAssignment(subject: .peer(name), profile: profile)
        default: return nil
        }
    }

    private static func decodeProfileRule(_ value: ConfigValue) -> ProfileRule? {
        guard let map = value.mapping else { return nil }
        let destination = map.optional("destination", default: IPNetwork?.none) { network($0).map(Optional.some) }
        let transport = map.optional("protocol", default: TransportProtocol.any) { $0.oneOf(TransportProtocol.self) }
        let ports = map.optional("ports", default: [Int]()) { self.ports($0) }
        map.finish()
        guard let destination, let transport, let ports else { return nil }
        if !ports.isEmpty, transport == .any {
            map.optional("ports")?.error("ports need protocol: tcp or udp")
            return nil
        }
        return ProfileRule(destination: destination, transport: transport, ports: ports)
    }

    private static func decodeMasquerade(_ value: ConfigValue) -> Masquerade? {
        guard let map = value.mapping else { return nil }
        let source = map.required("source").flatMap(network)
        let outInterface = map.required("out_interface").flatMap(interfaceName)
        map.finish()
        guard let source, let outInterface else { return nil }
        return Masquerade(source: source, outInterface: outInterface)
    }

    private static func decodeDNSHijack(_ value: ConfigValue) -> DNSHijack? {
        guard let map = value.mapping else { return nil }
        let sources = map.required("sources").flatMap(networks)
        let resolverValue = map.required("resolver")
        // A dns.filter pipeline of this agent by name (resolved after every pipeline is read), or an address.
        let pipeline = resolverValue?.string.flatMap { text in
            IPNetwork.addressBytes(text) == nil && !text.contains(":") && !text.contains(".") && ConfigLoader.isValidName(text) ? text : nil
        }
        let resolver = pipeline != nil ? nil : resolverValue.flatMap { value -> HostPort? in value.parsed { try HostPort.parse($0, defaultPort: 53) } }
        let blockDoH = map.optional("block_doh", default: true) { $0.bool }
        let extra = map.optional("doh_endpoints", default: [IPNetwork]()) { networks($0) }
        map.finish()
        if let pipeline, let sources, let blockDoH, let extra {
            return DNSHijack(sources: sources, resolver: nil, port: 53, resolverPipeline: pipeline, blockDoH: blockDoH, extraDoHEndpoints: extra)
        }
        guard let sources, let resolver, let blockDoH, let extra else { return nil }
        guard let address = IPNetwork.addressBytes(resolver.host) else {
            map.optional("resolver")?.error("the resolver must be an IP address")
            return nil
        }
        let resolverNetwork = IPNetwork(bytes: address, prefix: address.count * 8)
        if sources.contains(where: { $0.isIPv4 != resolverNetwork.isIPv4 }) {
            map.optional("sources")?.error("sources must be of the resolver's address family (\(resolverNetwork.isIPv4 ? "IPv4" : "IPv6"))")
            return nil
        }
        return DNSHijack(
            sources: sources, resolver: resolverNetwork, port: resolver.port, resolverPipeline: nil, blockDoH: blockDoH, extraDoHEndpoints: extra)
    }

    private static func decodeMark(_ value: ConfigValue) -> MarkRule? {
        guard let map = value.mapping else { return nil }
        let mark = map.required("mark").flatMap { value -> UInt32? in
            if let number = value.int(in: 1...Int(UInt32.max)) { return UInt32(number) }
            return nil
        }
        let source = map.optional("source", default: IPNetwork?.none) { network($0).map(Optional.some) }
        let destination = map.optional("destination", default: IPNetwork?.none) { network($0).map(Optional.some) }
        let transport = map.optional("protocol", default: TransportProtocol.any) { $0.oneOf(TransportProtocol.self) }
        let ports = map.optional("ports", default: [Int]()) { self.ports($0) }
        map.finish()
        guard let mark, let source, let destination, let transport, let ports else { return nil }
        if !ports.isEmpty, transport == .any {
            map.optional("ports")?.error("ports need protocol: tcp or udp")
            return nil
        }
        if let source, let destination, source.isIPv4 != destination.isIPv4 {
            map.optional("destination")?.error("source and destination are of different address families")
            return nil
        }
        return MarkRule(mark: mark, source: source, destination: destination, transport: transport, ports: ports)
    }
}

/// Domain names as the allowlist keeps them: lower case, no trailing dot, valid labels.
enum DomainName {
    static func normalized(_ text: String) -> String? {
        var name = text.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        guard labels.count >= 2, name.utf8.count <= 253 else { return nil }
        for label in labels {
            guard (1...63).contains(label.utf8.count), label.first != "-", label.last != "-",
                label.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") })
            else { return nil }
        }
        return name
    }
}
