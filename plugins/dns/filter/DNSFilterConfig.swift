import Foundation
import NIOSSL
import WeirCore

/// `dns.filter`: a filtering DNS server on UDP and TCP — block and allow lists in the formats people have,
/// canary domains, a cache, and upstreams it never falls back from (every upstream failing is SERVFAIL).
public struct DNSFilterConfig: StageConfig, ServesDNS, Hashable {
    public enum BlockAnswer: String, Sendable, CaseIterable {
        case nxdomain, zero, refused
    }

    public enum Strategy: String, Sendable, CaseIterable {
        /// Ask all at once, take the first good answer.
        case parallel
        /// In order; the next only when one fails.
        case failover
        /// The lowest moving average of latency (failures count heavily).
        case fastest
        case roundRobin = "round_robin"
    }

    public struct Upstream: Sendable, Hashable, CustomStringConvertible {
        public enum Transport: String, Sendable { case udp, tcp, tls }
        public var transport: Transport
        public var host: String
        public var port: Int
        /// tls: the name sent as SNI that the server's certificate must carry (`tls://9.9.9.9#dns.quad9.net`);
        /// without it (or besides it, as swift-nio-ssl checks) the certificate may carry the address.
        public var serverName: String?

        public var description: String {
            let prefix = transport == .udp ? "" : transport.rawValue + "://"
            return prefix + HostPort(host: host, port: port).description + (serverName.map { "#" + $0 } ?? "")
        }

        /// `ip[:port]` (UDP, falling back to TCP for truncated answers), `tcp://ip[:port]` (53),
        /// `tls://ip[:port][#name]` (DNS over TLS, 853).
        static func parse(_ text: String) throws -> Upstream {
            var rest = Substring(text)
            var transport = Transport.udp
            for candidate in [Transport.tcp, .tls, .udp] where rest.hasPrefix(candidate.rawValue + "://") {
                transport = candidate
                rest = rest.dropFirst(candidate.rawValue.count + 3)
            }
            if rest.contains("://") {
                throw ParseError(description: "\(text): upstreams are ip:port, udp://, tcp:// or tls://ip:port")
            }
            var serverName: String?
            if let hash = rest.firstIndex(of: "#") {
                guard transport == .tls else { throw ParseError(description: "\(text): #name is for tls:// upstreams") }
                serverName = String(rest[rest.index(after: hash)...])
                rest = rest[..<hash]
            }
            let defaultPort = transport == .tls ? 853 : 53
            let withPort = rest.hasSuffix("]") || !rest.contains(":") || rest.filter({ $0 == ":" }).count > 1 && !rest.hasPrefix("[")
                ? (rest.contains(":") && !rest.hasPrefix("[") ? "[\(rest)]:\(defaultPort)" : "\(rest):\(defaultPort)") : String(rest)
            let parsed = try HostPort.parse(withPort)
            guard parsed.isIPLiteral else {
                // The filter must not depend on another resolver to find its own upstreams.
                throw ParseError(description: "\(text): an upstream is an IP address (a name would need another resolver)")
            }
            return Upstream(transport: transport, host: parsed.host, port: parsed.port, serverName: serverName)
        }
    }

    /// Clients (by source network, or WireGuard peer of the same pipeline by name) whose rules are the
    /// group's own lists instead of the stage's.
    public struct Group: Sendable, Hashable {
        public var name: String
        public var networks: [IPNetwork]
        public var peers: [String]
        let rules: LoadedRules
    }

    public struct FastestAddressOptions: Sendable, Hashable {
        public var port: Int
        public var timeout: Duration
    }

    struct ParseError: Error, CustomStringConvertible {
        let description: String
    }

    public static let type = "dns.filter"
    public static let summary = "A filtering DNS server (UDP and TCP): block/allow lists, canaries, a cache, upstreams with no unfiltered fallback."
    public static let role = StageRole.service
    public static let options = [
        OptionDoc("listen", "host:port", default: "0.0.0.0:53", "Where the server answers, on UDP and TCP."),
        OptionDoc(
            "blocklists", "[path | {list: NAME}]", default: "[]",
            "Files or named lists of rules: hosts files, domain lists, adblock ||domain^ and @@||domain^, *.wildcard."),
        OptionDoc("allowlists", "[path | {list: NAME}]", default: "[]", "Files or named lists whose every rule allows; an allow rule wins over a block."),
        OptionDoc("block_answer", "nxdomain|zero|refused", default: "nxdomain", "The answer for blocked names (zero: 0.0.0.0 and ::)."),
        OptionDoc("canaries", "bool", default: "true", "Answer NXDOMAIN for use-application-dns.net, mask.icloud.com, mask-h2.icloud.com and _dns.resolver.arpa."),
        OptionDoc("records", "{name: [addresses] | name}", default: "{}", "Names answered here before any upstream: addresses, a rewrite to another name (CNAME), *.wildcards."),
        OptionDoc(
            "records_lists", "[NAME]", default: "[]",
            "Named lists of kind dns_records (the coordinator's lists): ADDRESS NAME... lines, {name, addresses}, {name, alias}; inline records win."),
        OptionDoc(
            "records_files", "[path]", default: "[]",
            "Hosts-format files of records (ADDRESS NAME..., *.wildcards); read with the configuration, the inline records win."),
        OptionDoc(
            "groups", "[{name, sources, blocklists, allowlists}]", default: "[]",
            "Clients by source network or WireGuard peer name that get these lists instead of the stage's (the most specific source wins)."),
        OptionDoc("upstreams", "[ip:port|tcp://ip:port|tls://ip:port#name]", "Resolvers asked for what is not blocked or cached (required; IP addresses)."),
        OptionDoc("upstream_ca", "path", default: "the system's", "CA certificates (PEM) that sign the tls:// upstreams' certificates."),
        OptionDoc("strategy", "parallel|failover|fastest|round_robin", default: "failover", "How upstreams share the queries."),
        OptionDoc("upstream_timeout", "duration", default: "2s", "How long one upstream may take before it counts as failed."),
        OptionDoc(
            "cache", "{size, min_ttl, max_ttl, serve_stale, prefetch}", default: "{size: 10000}",
            "Answers kept for their TTL, clamped; size 0 turns the cache off. serve_stale: how long expired answers may answer when every upstream fails; prefetch: refresh names asked near their expiry."),
        OptionDoc("query_log", "{file, max_size}", default: "none", "One JSON line per answer (client, name, type, result, deciding rule, upstream, ms), rotated to FILE.1 at max_size (100MiB)."),
        OptionDoc("max_inflight", "count", default: "4096", "Queries being answered at once; more are refused."),
        OptionDoc(
            "fastest_address", "{port, timeout}", default: "none",
            "For answers with several addresses, connect to each (TCP, port) at once and answer with the first that accepts; cached for the TTL."),
    ]
    public static var sample: String { String(decoding: PackageResources.dns_filter_sample_yaml, as: UTF8.self) }

    public static let canaryDomains = ["use-application-dns.net", "mask.icloud.com", "mask-h2.icloud.com", "_dns.resolver.arpa"]

    public var listen: BindAddress
    public var blocklists: [String]
    public var allowlists: [String]
    public var blockAnswer: BlockAnswer
    public var canaries: Bool
    public var upstreams: [Upstream]
    public var strategy: Strategy
    public var upstreamTimeout: Duration
    public var cacheSize: Int
    public var minTTL: UInt32
    public var maxTTL: UInt32
    /// How long after expiry an answer may still be given when every upstream fails (zero: never).
    public var serveStale: Duration
    /// Refresh a name asked again near the end of its TTL.
    public var prefetch: Bool
    /// Answer with the address that accepts a TCP connection on `port` first.
    public var fastestAddress: FastestAddressOptions?
    public var maxInflight: Int
    var records: LocalRecords
    /// Digests of `records_files`, read at decode like the lists.
    var recordsDigest: String
    public var groups: [Group]
    public var upstreamCA: String?
    /// `upstream_ca` with its earliest expiry, read at validation.
    public var certificates: [LoadedCertificate] = []
    public var queryLogFile: String?
    public var queryLogMaxSize: UInt64
    /// Answers kept in memory for `weir ctl agents dns-queries` (0: none).
    public var queryLogRing: Int
    /// The lists, read and compiled when the configuration is loaded: a reload builds the new rules aside
    /// while the running stage answers with the old ones.
    let rules: LoadedRules

    public var dnsListen: BindAddress { listen }
    public var dnsGroupNames: [String] { groups.map(\.name) }
    public var dnsUpstreams: [HostPort] { upstreams.map { HostPort(host: $0.host, port: $0.port) } }

    public var contentFingerprint: String { ([rules.digest, recordsDigest] + groups.map(\.rules.digest)).joined(separator: ",") }

    public static func decode(_ options: ConfigMapping) -> DNSFilterConfig? {
        let listen = options.optional("listen", default: try! BindAddress.parse("0.0.0.0:53")) { $0.parsed(BindAddress.parse) }
        var readable = true
        let sources = readLists(options, &readable)
        let blocklists: [String]? = sources.filter { !$0.allowList }.map(\.name)
        let allowlists: [String]? = sources.filter(\.allowList).map(\.name)
        let groups = options.optional("groups", default: [Group]()) { value -> [Group]? in
            guard let items = value.sequence else { return nil }
            var groups: [Group] = []
            var names: Set<String> = []
            for item in items {
                guard let map = item.mapping else { return nil }
                defer { map.finish() }
                guard let name = map.required("name")?.string, ConfigLoader.isValidName(name) else {
                    map.optional("name")?.error("a group name is 1-64 letters, digits, '-' or '_'")
                    return nil
                }
                guard names.insert(name).inserted else {
                    map.optional("name")?.error("group \"\(name)\" is listed twice")
                    return nil
                }
                var networks: [IPNetwork] = []
                var peers: [String] = []
                guard let sourceItems = map.required("sources")?.sequence, !sourceItems.isEmpty else { return nil }
                for source in sourceItems {
                    guard let text = source.string else { return nil }
                    if let network = try? IPNetwork.parse(text) {
                        networks.append(network)
                    } else if PeerNames.isValid(text) {
                        peers.append(text)
                    } else {
                        source.error("a network (10.8.1.0/24) or a WireGuard peer's name")
                        return nil
                    }
                }
                var ok = true
                let lists = readLists(map, &ok)
                guard ok else { return nil }
                groups.append(Group(name: name, networks: networks, peers: peers, rules: LoadedRules(lists)))
            }
            return groups
        }
        let blockAnswer = options.optional("block_answer", default: BlockAnswer.nxdomain) { $0.oneOf(BlockAnswer.self) }
        let canaries = options.optional("canaries", default: true) { $0.bool }
        var records = options.optional("records", default: LocalRecords()) { LocalRecords.decode($0) }
        // Named lists of records, then files of records (hosts format, read now like the lists): the inline
        // records win over both, a list over a file.
        var recordsDigest = ""
        if let lists = options.optional("records_lists") {
            for item in lists.sequence ?? [] {
                guard let name = item.string, let list = item.namedList(name, kinds: [.dnsRecords]), let entries = list.sequence,
                    records?.addList(entries) == true
                else {
                    records = nil
                    continue
                }
                recordsDigest += "list:\(name)=\(list.node.fingerprint);"
            }
            if lists.sequence == nil { records = nil }
        }
        if let files = options.optional("records_files") {
            if let items = files.sequence {
                for item in items {
                    guard let path = item.filePath else {
                        records = nil
                        continue
                    }
                    guard let data = FileManager.default.contents(atPath: path) else {
                        item.error("cannot read \(path)")
                        records = nil
                        continue
                    }
                    if let problem = records?.addHostsFile(Array(data)) {
                        item.error("\(path):\(problem)")
                        records = nil
                    }
                    recordsDigest += LoadedRules.digest([(path, Array(data), false)]) + ";"
                }
            } else {
                records = nil
            }
        }
        let upstreams = options.required("upstreams").flatMap { value -> [Upstream]? in
            guard let items = value.sequence, !items.isEmpty else {
                value.error("at least one upstream resolver")
                return nil
            }
            let read = items.compactMap { $0.parsed(Upstream.parse) }
            return read.count == items.count ? read : nil
        }
        var upstreamCAExpiry: LoadedCertificate?
        let upstreamCA = options.optional("upstream_ca", default: String?.none) { value -> String?? in
            guard let path = value.filePath else { return nil }
            guard let read = try? NIOSSLCertificate.fromPEMFile(path), let notAfter = read.map({ Int($0.notValidAfter) }).min() else {
                value.error("cannot read PEM certificates from \(path)")
                return nil
            }
            upstreamCAExpiry = LoadedCertificate(file: path, notAfter: notAfter)
            return .some(path)
        }
        let strategy = options.optional("strategy", default: Strategy.failover) { $0.oneOf(Strategy.self) }
        let timeout = options.optional("upstream_timeout", default: Duration.seconds(2)) { $0.duration(atLeast: .milliseconds(50)) }
        var cacheSize: Int? = 10_000
        var minTTL: UInt32? = 0
        var maxTTL: UInt32? = 86_400
        var serveStale: Duration? = .zero
        var prefetch: Bool? = false
        if let cache = options.optional("cache") {
            if let map = cache.mapping {
                cacheSize = map.optional("size", default: 10_000) { $0.int(in: 0...10_000_000) }
                minTTL = map.optional("min_ttl", default: Duration.zero) { $0.duration(atLeast: .zero) }.map { UInt32($0.components.seconds) }
                maxTTL = map.optional("max_ttl", default: Duration.seconds(86_400)) { $0.duration(atLeast: .seconds(1)) }.map { UInt32(min($0.components.seconds, 604_800)) }
                serveStale = map.optional("serve_stale", default: Duration.zero) { $0.duration(atLeast: .zero) }
                prefetch = map.optional("prefetch", default: false) { $0.bool }
                map.finish()
            } else {
                cache.error("expected {size, min_ttl, max_ttl, serve_stale, prefetch}")
                cacheSize = nil
            }
        }
        var queryLogFile: String?
        var queryLogMaxSize: UInt64? = 100 << 20
        var queryLogRing: Int? = 1000
        if let log = options.optional("query_log") {
            if let map = log.mapping {
                queryLogRing = map.optional("ring", default: 1000) { $0.int(in: 0...100_000) }
                queryLogFile = map.optional("file")?.absolutePath
                if let size = map.optional("max_size") {
                    queryLogMaxSize = size.parsed(ByteSizeParser.parse).flatMap { $0 >= 4096 ? UInt64($0) : nil }
                    if queryLogMaxSize == nil { size.error("at least 4KiB") }
                }
                map.finish()
            } else {
                log.error("expected {ring, file, max_size}")
                queryLogMaxSize = nil
            }
        }
        let inflight = options.optional("max_inflight", default: 4096) { $0.int(in: 1...1_000_000) }
        let fastest = options.optional("fastest_address", default: FastestAddressOptions?.none) { value -> FastestAddressOptions?? in
            guard let map = value.mapping else { return nil }
            let port = map.required("port")?.int(in: 1...65535)
            let timeout = map.optional("timeout", default: Duration.milliseconds(300)) { $0.duration(atLeast: .milliseconds(10)) }
            map.finish()
            guard let port, let timeout else { return nil }
            return .some(FastestAddressOptions(port: port, timeout: timeout))
        }
        guard readable, let upstreamCA, let queryLogMaxSize, let queryLogRing, let groups, let records, let listen, let blocklists, let allowlists, let blockAnswer, let canaries, let upstreams, let strategy, let timeout, let cacheSize,
            let minTTL, let maxTTL, let inflight, let serveStale, let prefetch, let fastest
        else { return nil }
        if minTTL > maxTTL {
            options.optional("cache")?.error("min_ttl is above max_ttl")
            return nil
        }
        var config = DNSFilterConfig(
            listen: listen, blocklists: blocklists, allowlists: allowlists, blockAnswer: blockAnswer, canaries: canaries, upstreams: upstreams,
            strategy: strategy, upstreamTimeout: timeout, cacheSize: cacheSize, minTTL: minTTL, maxTTL: maxTTL, serveStale: serveStale,
            prefetch: prefetch, fastestAddress: fastest, maxInflight: inflight,
            records: records, recordsDigest: recordsDigest, groups: groups, upstreamCA: upstreamCA, queryLogFile: queryLogFile, queryLogMaxSize: queryLogMaxSize, queryLogRing: queryLogRing, rules: LoadedRules(sources))
        config.certificates = upstreamCAExpiry.map { [$0] } ?? []
        return config
    }

    /// The blocklists and allowlists of a mapping, read; an unreadable file is an error at its entry.
    static func readLists(_ options: ConfigMapping, _ readable: inout Bool) -> [(name: String, text: [UInt8], allowList: Bool)] {
        var sources: [(name: String, text: [UInt8], allowList: Bool)] = []
        for (key, allow) in [("blocklists", false), ("allowlists", true)] {
            guard let value = options.optional(key) else { continue }
            guard let items = value.sequence else {
                readable = false
                continue
            }
            for item in items {
                if item.hasKey("list") {
                    guard let list = namedListRules(item) else {
                        readable = false
                        continue
                    }
                    sources.append((list.name, list.text, allow))
                    continue
                }
                guard let path = item.filePath else {
                    readable = false
                    continue
                }
                guard let data = FileManager.default.contents(atPath: path) else {
                    item.error("cannot read \(path)")
                    readable = false
                    continue
                }
                sources.append((path, Array(data), allow))
            }
        }
        return sources
    }

    /// `{list: NAME}`: a named list (a `lists:` section of any file, or the coordinator's lists) as rule
    /// lines — its strings in any rule format, `{domain: …}` entries as domains; addresses are not DNS rules
    /// and are skipped. Named `list:NAME` in the query log and `weir_dns_rules`.
    static func namedListRules(_ item: ConfigValue) -> (name: String, text: [UInt8])? {
        guard let map = item.mapping else { return nil }
        let nameValue = map.required("list")
        map.finish()
        guard let nameValue, let name = nameValue.string, let entries = nameValue.namedList(name, kinds: [.destinations, .dnsRules])?.sequence else { return nil }
        var text: [UInt8] = []
        for entry in entries {
            if let line = entry.isScalar ? entry.string : nil {
                text += Array(line.utf8)
            } else if let domain = entry.node.mapping?.first(where: { $0.key.scalar?.string == "domain" })?.value.scalar?.string {
                text += Array(domain.utf8)
            }
            text.append(UInt8(ascii: "\n"))  // one line per entry, so a rule's line is its entry's position
        }
        return ("list:" + name, text)
    }

    /// Peer names in groups refer to the peers of a `wireguard` stage in the same pipeline.
    public func pipelineError(stages: [any StageConfig]) -> String? {
        PeerNames.unknownError(groups.flatMap(\.peers), in: stages, what: "groups")
    }

    /// Its UDP and TCP sockets: no listener or other DNS server may share the address.
    public var socketBindings: [(transport: Transport, address: BindAddress)] { [(.datagram, listen), (.stream, listen)] }

    public func makeStage(_ context: StageContext) -> any Stage { DNSFilter(config: self, context: context) }
}

/// Compiled rules with a digest of the lists they came from (what a reload compares).
final class LoadedRules: Sendable, Hashable {
    let rules: DomainRules
    let digest: String

    init(_ sources: [(name: String, text: [UInt8], allowList: Bool)]) {
        rules = DomainRules(lists: sources)
        digest = Self.digest(sources)
    }

    /// FNV-1a over the sources' names, kinds and bytes ("" for none): what tells two loads of files apart.
    static func digest(_ sources: [(name: String, text: [UInt8], allowList: Bool)]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for source in sources {
            for byte in Array(source.name.utf8) + [source.allowList ? 1 : 0] + source.text {
                hash ^= UInt64(byte)
                hash &*= 0x100_0000_01b3
            }
        }
        return sources.isEmpty ? "" : String(hash, radix: 16)
    }

    static func == (a: LoadedRules, b: LoadedRules) -> Bool { a.digest == b.digest }
    func hash(into hasher: inout Hasher) { hasher.combine(digest) }
}
