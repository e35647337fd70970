import WeirCore

/// Turns a stage's configuration into the objects it wants in the kernel. Pure: the same inputs give the
/// same state, so applying twice changes nothing.
struct NftCompiler {
    typealias Config = EnforceNftablesConfig

    let owner: String
    let config: Config
    /// The listener's port and transport, for allow_sources.
    let listener: (port: Int, transport: Transport)?
    /// Addresses the domains of allow_destinations resolve to now (already filtered for public/private).
    var resolved: Set<IPNetwork> = []
    /// Protected entries a reload omitted: they stay.
    var keptEntries: [Config.DestinationEntry] = []
    /// The tunnel addresses of peers named in profiles (from the pipeline's wireguard stage).
    var peerAddresses: [String: [IPNetwork]] = [:]

    static let filter = 0
    static let dstnat = -100
    static let srcnat = 100
    static let mangle = -150
    /// ICMPv6 types of neighbour discovery (RFC 4861): link-scoped (hop limit 255), never worth blocking.
    static let neighbourDiscovery = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit", "nd-neighbor-advert", "nd-redirect"]

    /// Known DNS-over-HTTPS/TLS resolvers (Cloudflare, Google, Quad9, OpenDNS, AdGuard, CleanBrowsing).
    static let dohEndpoints: [IPNetwork] = [
        "1.1.1.1", "1.0.0.1", "1.1.1.2", "1.0.0.2", "1.1.1.3", "1.0.0.3", "8.8.8.8", "8.8.4.4", "9.9.9.9",
        "149.112.112.112", "9.9.9.10", "149.112.112.10", "9.9.9.11", "149.112.112.11", "208.67.222.222",
        "208.67.220.220", "94.140.14.14", "94.140.15.15", "185.228.168.9", "185.228.169.9",
        "2606:4700:4700::1111", "2606:4700:4700::1001", "2001:4860:4860::8888", "2001:4860:4860::8844",
        "2620:fe::fe", "2620:fe::9", "2620:119:35::35", "2620:119:53::53", "2a10:50c0::ad1:ff", "2a10:50c0::ad2:ff",
    ].map { try! IPNetwork.parse($0) }

    func compile() -> NftOwnerState {
        var state = NftOwnerState()
        state.counters = ["dropped"]
        if let destinations = config.destinations { addDestinations(destinations, to: &state) }
        if !config.sources.isEmpty, let listener { addSources(listener, to: &state) }
        if !config.profiles.isEmpty { addProfiles(to: &state) }
        if !config.masquerade.isEmpty { addMasquerade(to: &state) }
        if let hijack = config.dnsHijack { addDNSHijack(hijack, to: &state) }
        if !config.marks.isEmpty { addMarks(to: &state) }
        return state
    }

    private var dropped: [NftJSON] { [Expr.counter(owner, "dropped"), Expr.drop] }

    /// Every entry in force: the configured ones and the protected ones a reload left out.
    var destinationEntries: [Config.DestinationEntry] { (config.destinations?.entries ?? []) + keptEntries }

    private func addDestinations(_ allowlist: Config.DestinationAllowlist, to state: inout NftOwnerState) {
        for ipv4 in [true, false] {
            let suffix = ipv4 ? "4" : "6"
            let type = ipv4 ? "ipv4_addr" : "ipv6_addr"
            state.sets["dst" + suffix] = .init(type: type, interval: false, counter: allowlist.countElements, size: allowlist.maxElements)
            state.sets["dstnet" + suffix] = .init(type: type, interval: true, counter: allowlist.countElements, size: nil)
            var addresses = resolved.filter { $0.isIPv4 == ipv4 }
            var networks: [IPNetwork] = []
            for entry in destinationEntries {
                guard case .network(let network) = entry.target, network.isIPv4 == ipv4 else { continue }
                if network.isSingleAddress { addresses.insert(network) } else { networks.append(network) }
            }
            let normalized = Self.withoutCovered(networks)
            // An address inside an allowed network is allowed already; keeping it out avoids two elements for one destination.
            state.addresses["dst" + suffix] = addresses.filter { address in !normalized.contains { $0.contains(address) } }
            state.networks["dstnet" + suffix] = Set(normalized)
        }
        let interfaces = Expr.match(Expr.meta("oifname"), Expr.strings(allowlist.interfaces))
        var rules: [[NftJSON]] = [
            // IPv6 cannot work without neighbour discovery and link-local traffic. Neighbour advertisements and
            // unreachability probes go to a neighbour's global address too: without them a neighbour cannot
            // find this host and its answers (a forwarded connection's SYN-ACK) never come.
            [interfaces, Expr.match(Expr.payload("ip6", "daddr"), Expr.networks([try! IPNetwork.parse("fe80::/10"), try! IPNetwork.parse("ff00::/8")])), Expr.accept],
            [interfaces, Expr.match(Expr.payload("icmpv6", "type"), Expr.strings(Self.neighbourDiscovery)), Expr.accept],
            [interfaces, Expr.addresses("daddr", ipv4: true, Expr.setRef(owner, "dst4")), Expr.accept],
            [interfaces, Expr.addresses("daddr", ipv4: true, Expr.setRef(owner, "dstnet4")), Expr.accept],
            [interfaces, Expr.addresses("daddr", ipv4: false, Expr.setRef(owner, "dst6")), Expr.accept],
            [interfaces, Expr.addresses("daddr", ipv4: false, Expr.setRef(owner, "dstnet6")), Expr.accept],
        ]
        let last: [NftJSON] = [interfaces] + dropped
        // Addresses clients resolved through a followed dns.filter: each client reaches what it was answered
        // (client . destination), until the element's timeout. Forwarded traffic only: the host's own
        // processes ask from another address than they send from.
        var following: [[NftJSON]] = []
        if !allowlist.followed.isEmpty {
            for ipv4 in [true, false] {
                let name = Self.followSet(ipv4: ipv4)
                let type = ipv4 ? "ipv4_addr" : "ipv6_addr"
                state.sets[name] = .init(type: type + " . " + type, interval: false, counter: false, size: allowlist.maxElements, timeout: true)
                let family = ipv4 ? "ip" : "ip6"
                following.append([
                    interfaces, Expr.match(Expr.concat([Expr.payload(family, "saddr"), Expr.payload(family, "daddr")]), Expr.setRef(owner, name)), Expr.accept,
                ])
            }
        }
        state.chains["dst_forward"] = .init(
            base: .init(type: "filter", hook: "forward", priority: Self.filter), rules: (rules + following + [last]).map(NftOwnerState.Rule.init))
        // The agent's own lookups of the listed domains must reach its resolvers.
        for resolver in allowlist.resolvers + allowlist.followedUpstreams {
            guard let bytes = IPNetwork.addressBytes(resolver.host) else { continue }
            let address = IPNetwork(bytes: bytes, prefix: bytes.count * 8)
            rules.append([interfaces, Expr.address("daddr", address), Expr.l4proto(["tcp", "udp"]), Expr.destinationPort([resolver.port]), Expr.accept])
        }
        state.chains["dst_output"] = .init(base: .init(type: "filter", hook: "output", priority: Self.filter), rules: (rules + [last]).map(NftOwnerState.Rule.init))
    }

    /// The set of (client . destination) pairs that `domains_from` entries fill.
    static func followSet(ipv4: Bool) -> String { ipv4 ? "follow4" : "follow6" }

    private func addSources(_ listener: (port: Int, transport: Transport), to state: inout NftOwnerState) {
        let proto = Expr.l4proto([listener.transport == .datagram ? "udp" : "tcp"])
        let port = Expr.destinationPort([listener.port])
        var rules: [[NftJSON]] = []
        for ipv4 in [true, false] {
            let name = "src" + (ipv4 ? "4" : "6")
            state.sets[name] = .init(type: ipv4 ? "ipv4_addr" : "ipv6_addr", interval: true, counter: false, size: nil)
            state.networks[name] = Set(Self.withoutCovered(config.sources.filter { $0.isIPv4 == ipv4 }))
            rules.append([proto, port, Expr.addresses("saddr", ipv4: ipv4, Expr.setRef(owner, name)), Expr.accept])
        }
        rules.append([proto, port] + dropped)
        state.chains["src_input"] = .init(base: .init(type: "filter", hook: "input", priority: Self.filter), rules: rules.map(NftOwnerState.Rule.init))
    }

    private func addProfiles(to state: inout NftOwnerState) {
        // Most specific source first: a host's own profile wins over its network's.
        // A peer stands for its tunnel addresses (none yet: nothing of its traffic to match).
        let assignments = config.profiles.flatMap { assignment -> [(source: IPNetwork, profile: Config.Profile)] in
            switch assignment.subject {
            case .source(let network): return [(network, assignment.profile)]
            case .peer(let name): return (peerAddresses[name] ?? []).map { ($0, assignment.profile) }
            }
        }.sorted { $0.source.prefix != $1.source.prefix ? $0.source.prefix > $1.source.prefix : $0.source < $1.source }
        state.chains["profiles"] = .init(
            base: .init(type: "filter", hook: "forward", priority: Self.filter),
            rules: assignments.map { .init([Expr.address("saddr", $0.source), Expr.goto(owner, "profile." + $0.profile.name)]) })
        let private4 = IPNetwork.privateNetworks.filter(\.isIPv4)
        let private6 = IPNetwork.privateNetworks.filter { !$0.isIPv4 }
        for profile in Set(assignments.map(\.profile)) {
            var rules: [[NftJSON]]
            switch profile {
            case .full:
                rules = [[Expr.accept]]
            case .internetOnly:
                rules = [
                    [Expr.addresses("daddr", ipv4: true, Expr.networks(private4))] + dropped,
                    [Expr.addresses("daddr", ipv4: false, Expr.networks(private6))] + dropped,
                    [Expr.accept],
                ]
            case .intranetOnly:
                rules = [
                    [Expr.addresses("daddr", ipv4: true, Expr.networks(private4)), Expr.accept],
                    [Expr.addresses("daddr", ipv4: false, Expr.networks(private6)), Expr.accept],
                    dropped,
                ]
            case .custom(let name):
                rules = (config.customProfiles[name] ?? []).map { rule in
                    var expr: [NftJSON] = []
                    if let destination = rule.destination { expr.append(Expr.address("daddr", destination)) }
                    if rule.transport != .any { expr.append(Expr.l4proto([rule.transport.rawValue])) }
                    if !rule.ports.isEmpty { expr.append(Expr.destinationPort(rule.ports)) }
                    return expr + [Expr.accept]
                } + [dropped]
            }
            state.chains["profile." + profile.name] = .init(base: nil, rules: rules.map(NftOwnerState.Rule.init))
        }
    }

    private func addMasquerade(to state: inout NftOwnerState) {
        let rules = config.masquerade.map { entry -> NftOwnerState.Rule in
            .init([Expr.address("saddr", entry.source), Expr.match(Expr.meta("oifname"), .string(entry.outInterface)), ["masquerade": .null]])
        }
        state.chains["snat"] = .init(base: .init(type: "nat", hook: "postrouting", priority: Self.srcnat), rules: rules)
    }

    private func addDNSHijack(_ hijack: Config.DNSHijack, to state: inout NftOwnerState) {
        var rules: [NftOwnerState.Rule] = []
        for ipv4 in [true, false] {
            let sources = hijack.sources.filter { $0.isIPv4 == ipv4 }
            guard !sources.isEmpty else { continue }
            var match = [Expr.addresses("saddr", ipv4: ipv4, Expr.networks(sources))]
            let target: NftJSON
            if let resolver = hijack.resolver {
                match.append(Expr.addresses("daddr", ipv4: ipv4, Expr.value(resolver), op: "!="))
                target = ["dnat": ["family": .string(ipv4 ? "ip" : "ip6"), "addr": .string(resolver.address), "port": .number(hijack.port)]]
            } else {
                // A resolver on every address of this host: the address the query arrived at.
                target = ["redirect": ["port": .number(hijack.port)]]
            }
            rules.append(.init(match + [Expr.l4proto(["tcp", "udp"]), Expr.destinationPort([53]), target]))
        }
        state.chains["dns_hijack"] = .init(base: .init(type: "nat", hook: "prerouting", priority: Self.dstnat), rules: rules)
        guard hijack.blockDoH else { return }
        let endpoints = Self.dohEndpoints + hijack.extraDoHEndpoints
        var blocking: [[NftJSON]] = []
        let sourceFamilies = Set(hijack.sources.map(\.isIPv4))
        for family in [true, false] {
            let name = "doh" + (family ? "4" : "6")
            state.sets[name] = .init(type: family ? "ipv4_addr" : "ipv6_addr", interval: true, counter: false, size: nil)
            state.networks[name] = Set(Self.withoutCovered(endpoints.filter { $0.isIPv4 == family }))
            // Clients of the hijack only: their sources are of one family; the other family is matched by any
            // source (a client's IPv6 traffic has another source than its hijacked IPv4 DNS).
            let from: NftJSON = sourceFamilies.contains(family)
                ? Expr.addresses("saddr", ipv4: family, Expr.networks(hijack.sources.filter { $0.isIPv4 == family }))
                : Expr.match(Expr.meta("nfproto"), .string(family ? "ipv4" : "ipv6"))
            blocking.append([from, Expr.addresses("daddr", ipv4: family, Expr.setRef(owner, name)), Expr.l4proto(["tcp", "udp"]), Expr.destinationPort([443, 853])] + dropped)
        }
        state.chains["doh_forward"] = .init(base: .init(type: "filter", hook: "forward", priority: Self.filter), rules: blocking.map(NftOwnerState.Rule.init))
    }

    private func addMarks(to state: inout NftOwnerState) {
        let marks = config.marks.map { Int($0.mark) }
        // Replies carry the connection's mark back onto their packets.
        var rules: [[NftJSON]] = [[Expr.match(Expr.ct("mark"), Expr.numbers(Array(Set(marks)).sorted())), Expr.setMark(Expr.meta("mark"), Expr.ct("mark"))]]
        for rule in config.marks {
            var expr: [NftJSON] = []
            if let source = rule.source { expr.append(Expr.address("saddr", source)) }
            if let destination = rule.destination { expr.append(Expr.address("daddr", destination)) }
            if rule.transport != .any { expr.append(Expr.l4proto([rule.transport.rawValue])) }
            if !rule.ports.isEmpty { expr.append(Expr.destinationPort(rule.ports)) }
            expr += [Expr.setMark(Expr.meta("mark"), .number(Int(rule.mark))), Expr.setMark(Expr.ct("mark"), .number(Int(rule.mark)))]
            rules.append(expr)
        }
        let compiled = rules.map(NftOwnerState.Rule.init)
        state.chains["mark_prerouting"] = .init(base: .init(type: "filter", hook: "prerouting", priority: Self.mangle), rules: compiled)
        state.chains["mark_output"] = .init(base: .init(type: "route", hook: "output", priority: Self.mangle), rules: compiled)
    }

    /// Networks not covered by another in the list (interval sets refuse overlapping elements), sorted.
    static func withoutCovered(_ networks: [IPNetwork]) -> [IPNetwork] {
        let sorted = Set(networks).sorted { $0.prefix != $1.prefix ? $0.prefix < $1.prefix : $0 < $1 }
        var kept: [IPNetwork] = []
        for network in sorted where !kept.contains(where: { $0.contains(network) }) { kept.append(network) }
        return kept.sorted()
    }
}
