import WeirCore

/// What one owner (a pipeline's enforce.nftables stage) has in Weir's table: sets, counters and chains with
/// their rules. Built from the configuration (desired) or from a listing of the kernel (actual); the planner
/// turns the difference into commands.
struct NftOwnerState: Sendable, Equatable {
    struct SetSpec: Sendable, Hashable {
        var type: String  // ipv4_addr | ipv6_addr | "ipv4_addr . ipv4_addr" (concatenated)
        var interval: Bool
        var counter: Bool
        var size: Int?
        /// Elements carry timeouts (the kernel removes them when they expire).
        var timeout = false
    }

    struct BaseChain: Sendable, Hashable {
        var type: String  // filter | nat | route
        var hook: String
        var priority: Int
    }

    struct Rule: Sendable, Equatable {
        /// `weir:` and a digest of `expr`: how a listed rule is recognised.
        var comment: String
        /// Known for desired rules; listings are compared by comment only.
        var expr: NftJSON?

        static func == (a: Rule, b: Rule) -> Bool { a.comment == b.comment }
    }

    struct Chain: Sendable, Equatable {
        var base: BaseChain?
        var rules: [Rule]
    }

    /// By short name (without the owner prefix).
    var sets: [String: SetSpec] = [:]
    var counters: Set<String> = []
    var chains: [String: Chain] = [:]
    /// Elements of interval sets (small, managed through libnftables).
    var networks: [String: Set<IPNetwork>] = [:]
    /// Elements of address (hash) sets (large, changed through netlink directly).
    var addresses: [String: Set<IPNetwork>] = [:]

    var isEmpty: Bool { sets.isEmpty && counters.isEmpty && chains.isEmpty }
}

/// The table every enforce.nftables stage shares. Each stage's objects are named `<pipeline>.<name>`.
enum NftNames {
    static let family = "inet"
    static let table = "weir"
    /// NFPROTO_INET, for netlink.
    static let inetFamily: UInt16 = 1

    static func full(_ owner: String, _ name: String) -> String { "\(owner).\(name)" }

    /// The owner and short name of a listed object, when it follows the naming.
    static func split(_ name: String) -> (owner: String, name: String)? {
        guard let dot = name.firstIndex(of: ".") else { return nil }
        return (String(name[..<dot]), String(name[name.index(after: dot)...]))
    }
}

/// Builders for the nftables JSON expressions the rules use.
enum Expr {
    static func match(_ left: NftJSON, _ right: NftJSON, op: String = "==") -> NftJSON {
        ["match": ["op": .string(op), "left": left, "right": right]]
    }
    static func payload(_ protocolName: String, _ field: String) -> NftJSON {
        ["payload": ["protocol": .string(protocolName), "field": .string(field)]]
    }
    static func meta(_ key: String) -> NftJSON { ["meta": ["key": .string(key)]] }
    static func ct(_ key: String) -> NftJSON { ["ct": ["key": .string(key)]] }
    static func setRef(_ owner: String, _ name: String) -> NftJSON { .string("@" + NftNames.full(owner, name)) }

    static func value(_ network: IPNetwork) -> NftJSON {
        network.isSingleAddress ? .string(network.address) : ["prefix": ["addr": .string(network.address), "len": .number(network.prefix)]]
    }
    static func anonymousSet(_ items: [NftJSON]) -> NftJSON { items.count == 1 ? items[0] : ["set": .array(items)] }
    static func networks(_ networks: [IPNetwork]) -> NftJSON { anonymousSet(networks.map(value)) }
    static func strings(_ values: [String]) -> NftJSON { anonymousSet(values.map { .string($0) }) }
    static func numbers(_ values: [Int]) -> NftJSON { anonymousSet(values.map { .number($0) }) }

    static func address(_ direction: String, _ network: IPNetwork) -> NftJSON {
        match(payload(network.isIPv4 ? "ip" : "ip6", direction), value(network))
    }
    static func addresses(_ direction: String, ipv4: Bool, _ right: NftJSON, op: String = "==") -> NftJSON {
        match(payload(ipv4 ? "ip" : "ip6", direction), right, op: op)
    }
    static func concat(_ items: [NftJSON]) -> NftJSON { ["concat": .array(items)] }
    static func l4proto(_ names: [String]) -> NftJSON { match(meta("l4proto"), strings(names)) }
    static func destinationPort(_ ports: [Int]) -> NftJSON { match(payload("th", "dport"), numbers(ports)) }

    static let accept: NftJSON = ["accept": .null]
    static let drop: NftJSON = ["drop": .null]
    static func goto(_ owner: String, _ chain: String) -> NftJSON { ["goto": ["target": .string(NftNames.full(owner, chain))]] }
    static func counter(_ owner: String, _ name: String) -> NftJSON { ["counter": .string(NftNames.full(owner, name))] }
    static func setMark(_ key: NftJSON, _ value: NftJSON) -> NftJSON { ["mangle": ["key": key, "value": value]] }
}

extension NftOwnerState.Rule {
    init(_ expr: [NftJSON]) {
        let json = NftJSON.array(expr)
        self.init(comment: "weir:" + Self.digest(json.text), expr: json)
    }

    /// FNV-1a, 64 bits, hex: enough to tell rules apart, short enough for a comment.
    static func digest(_ text: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
        return String(hash, radix: 16)
    }
}
