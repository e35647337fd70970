import Glibc
import WeirCore

/// Which device a stage's classes live on: the interface itself (traffic leaving it) or the IFB device its
/// ingress is redirected to (traffic arriving).
enum ShapeSide: String, Codable, Sendable, CaseIterable {
    case egress, ingress
}

/// One HTB class a stage wants, under a key that stays the same across reloads so the class (and its
/// counters) is kept and only its rates change.
struct ClassSpec: Codable, Hashable, Sendable {
    /// `total`, `default`, `class:NAME`, or for on-demand classes `client:ADDRESS` / `mark:0xVALUE`.
    var key: String
    /// The `class` label of its metrics.
    var label: String
    /// Key of the parent class; nil for the stage's top class, which sits under weir's root qdisc.
    var parent: String?
    /// Bytes per second.
    var rate: UInt64
    var ceil: UInt64
    var isLeaf: Bool
}

/// Everything a stage asks of one device, derived from its config without touching the kernel.
struct StageShape: Codable, Hashable, Sendable {
    /// The listener whose traffic the stage shapes; protocol 0 and port 0 for the whole device.
    var scopeProtocol: UInt8
    var scopePort: UInt16
    /// `pipeline`, `client_ip` or `mark`.
    var per: String
    /// The stage's own classes: `total`, the named classes, `default`.
    var classes: [ClassSpec]
    /// Named classes' matches, in order; the first that matches takes the packet.
    var rules: [Rule]
    /// Rates of each on-demand (client or mark) class.
    var dynamicRate: UInt64
    var dynamicCeil: UInt64
    var maxDynamic: Int
    var idleSeconds: Int64
    /// Other rates for some clients, first match wins.
    /// (Optional: records written before it existed decode.)
    var clientRates: [ShapeTCConfig.ClientRate]?
    /// Named client_rates entries: class key (`rate:NAME`, one of `classes`) → the clients that share it.
    var sharedClients: [String: [DynamicKey]]?

    struct Rule: Codable, Hashable, Sendable {
        var classKey: String
        var match: ShapeTCConfig.Match
    }

    var hasDynamicClasses: Bool { per != ShapeTCConfig.Per.pipeline.rawValue }

    /// The stage's classes: a top class (`total`) under which the named classes and `default` (the rest of
    /// the stage's traffic; with per client or mark, clients beyond max_clients and those still waiting for
    /// their class) share and borrow, and on-demand classes are added.
    init(config: ShapeTCConfig, listener: (port: Int, transport: Transport)?) {
        if let listener {
            scopeProtocol = UInt8(listener.transport == .datagram ? IPPROTO_UDP : IPPROTO_TCP)
            scopePort = UInt16(listener.port)
        } else {
            scopeProtocol = 0
            scopePort = 0
        }
        per = config.per.rawValue
        // An uncapped total still needs a rate for HTB; 100gbit is beyond any link weir shapes.
        let unlimited: UInt64 = 12_500_000_000
        let total: (rate: UInt64, ceil: UInt64) =
            switch config.per {
            case .pipeline: (config.rate, config.ceil)
            case .clientIP, .mark: (config.total ?? unlimited, config.total ?? unlimited)
            }
        var classes = [ClassSpec(key: "total", label: "total", parent: nil, rate: total.rate, ceil: total.ceil, isLeaf: false)]
        var rules: [Rule] = []
        var guaranteed: UInt64 = 0
        for named in config.classes {
            let key = "class:" + named.name
            classes.append(ClassSpec(key: key, label: named.name, parent: "total", rate: named.rate, ceil: named.ceil, isLeaf: true))
            rules.append(Rule(classKey: key, match: named.match))
            guaranteed += named.rate
        }
        let defaultClass: (rate: UInt64, ceil: UInt64) =
            switch config.per {
            // What the named classes leave of the guarantee, but never nothing: HTB needs a rate.
            case .pipeline: (max(config.rate - min(guaranteed, config.rate), max(config.rate / 100, 125)), config.ceil)
            case .clientIP, .mark: (config.rate, config.ceil)
            }
        classes.append(ClassSpec(key: "default", label: "default", parent: "total", rate: defaultClass.rate, ceil: defaultClass.ceil, isLeaf: true))
        var shared: [String: [DynamicKey]] = [:]
        for clientRate in config.clientRates where config.per == .clientIP {
            guard let name = clientRate.name else { continue }
            let key = "rate:" + name
            classes.append(ClassSpec(key: key, label: name, parent: "total", rate: clientRate.rate, ceil: clientRate.ceil, isLeaf: true))
            shared[key] = clientRate.clients.filter(\.isSingleAddress).map(DynamicKey.init(client:))
        }
        sharedClients = shared.isEmpty ? nil : shared
        self.classes = classes
        self.rules = rules
        dynamicRate = config.rate
        dynamicCeil = config.ceil
        maxDynamic = config.maxClients
        idleSeconds = config.idleTimeout.components.seconds
        clientRates = config.clientRates.isEmpty ? nil : config.clientRates
    }

    /// The entries of client_rates that give clients classes of their own (named entries have one shared class).
    var clientRateIndex: ClientRateIndex { ClientRateIndex((clientRates ?? []).filter { $0.name == nil }) }

    /// Every client placed in a named entry's class, with that class's key.
    var sharedMembers: [(key: String, client: DynamicKey)] {
        (sharedClients ?? [:]).sorted { $0.key < $1.key }.flatMap { key, clients in clients.map { (key, $0) } }
    }

    /// Clients unnamed client_rates entries list one address at a time (or by peer name): their classes are made
    /// when the stage is applied, so their first packets are shaped already (an on-demand class comes only after
    /// a packet went out in `default`, which for a VPN's unrated rest is unshaped), and kept while listed.
    var configuredClients: [DynamicKey] {
        guard per == ShapeTCConfig.Per.clientIP.rawValue else { return [] }
        var seen = Set<DynamicKey>()
        let shared = Set(sharedMembers.map(\.client))
        return (clientRates ?? []).filter { $0.name == nil }.flatMap(\.clients).filter(\.isSingleAddress).map(DynamicKey.init(client:))
            .filter { !shared.contains($0) && seen.insert($0).inserted }
    }

    /// The spec of an on-demand class for `key`; `rates` from `clientRateIndex` when asking for many.
    func dynamicClass(_ key: DynamicKey, rates: ClientRateIndex? = nil) -> ClassSpec {
        let address = key.family == 0 ? nil : IPNetwork(bytes: Array(key.bytes.prefix(key.family == 4 ? 4 : 16)), prefix: key.family == 4 ? 32 : 128)
        let chosen = address.flatMap { (rates ?? clientRateIndex).rate(for: $0) }
        return ClassSpec(
            key: key.classKey, label: key.label, parent: "total", rate: chosen?.rate ?? dynamicRate, ceil: chosen?.ceil ?? dynamicCeil,
            isLeaf: true)
    }

    var scopeDescription: String {
        scopePort == 0 ? "all traffic" : "\(scopeProtocol == UInt8(IPPROTO_UDP) ? "udp" : "tcp") port \(scopePort)"
    }
}

/// client_rates looked up by address without going through the list for every class: single addresses (there
/// may be thousands) in a dictionary, networks in order; the first entry that matches wins, as listed.
struct ClientRateIndex {
    private let rates: [ShapeTCConfig.ClientRate]
    private var single: [IPNetwork: Int] = [:]
    private var networks: [(index: Int, network: IPNetwork)] = []

    init(_ rates: [ShapeTCConfig.ClientRate]) {
        self.rates = rates
        for (index, rate) in rates.enumerated() {
            for client in rate.clients {
                if !client.isSingleAddress { networks.append((index, client)) } else if single[client] == nil { single[client] = index }
            }
        }
    }

    func rate(for address: IPNetwork) -> ShapeTCConfig.ClientRate? {
        var chosen = single[address]
        for entry in networks where entry.index < (chosen ?? Int.max) && entry.network.contains(address) {
            chosen = entry.index
            break
        }
        return chosen.map { rates[$0] }
    }
}

/// A client address (family 4 or 6) or a mark (family 0, value in the first four bytes, host order) that
/// has a class of its own; the classifier's `weir_shape_dynamic_key` without the scope.
struct DynamicKey: Codable, Hashable, Sendable {
    var family: UInt8
    var bytes: [UInt8]  // 16

    static func mark(_ value: UInt32) -> DynamicKey {
        DynamicKey(family: 0, bytes: withUnsafeBytes(of: value) { Array($0) } + [UInt8](repeating: 0, count: 12))
    }

    /// The key of one client address, as the classifier writes it (IPv4 in the first four bytes).
    init(client: IPNetwork) {
        self.init(family: client.isIPv4 ? 4 : 6, bytes: client.bytes + [UInt8](repeating: 0, count: 16 - client.bytes.count))
    }

    init(family: UInt8, bytes: [UInt8]) {
        self.family = family
        self.bytes = bytes
    }

    var markValue: UInt32 { bytes.prefix(4).withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } }

    var label: String {
        switch family {
        case 4: IPNetwork(bytes: Array(bytes.prefix(4)), prefix: 32).address
        case 6: IPNetwork(bytes: bytes, prefix: 128).address
        default: "mark:0x" + String(markValue, radix: 16)
        }
    }

    var classKey: String { family == 0 ? label : "client:" + label }
}

/// An HTB class as the kernel has it or should have it: minor numbers under weir's root (major 7765).
struct HTBClass: Hashable, Sendable {
    var minor: UInt16
    /// nil: directly under the root qdisc.
    var parentMinor: UInt16?
    var rate: UInt64
    var ceil: UInt64
    var isLeaf: Bool
}

/// The changes that take a device's classes from what the kernel has to what is wanted, for the classes of
/// one stage: what is unchanged is not touched (its counters keep counting), rates change in place.
struct ClassPlan: Equatable {
    enum Step: Equatable {
        case delete(HTBClass)
        case create(HTBClass)
        case change(HTBClass)
    }

    var steps: [Step] = []

    var isEmpty: Bool { steps.isEmpty }

    /// `desired`: every class the stage wants; `actual`: the device's classes; `owned`: minors the stage
    /// had before (only those may be deleted: other stages' classes on the device are left alone).
    static func make(desired: [HTBClass], actual: [UInt16: HTBClass], owned: Set<UInt16>) -> ClassPlan {
        let wanted = Dictionary(desired.map { ($0.minor, $0) }) { a, _ in a }
        var plan = ClassPlan()
        // A class that moved to another parent cannot be changed in place: it is deleted and created again.
        var deletions = owned.compactMap { minor -> HTBClass? in
            guard let current = actual[minor] else { return nil }
            guard let want = wanted[minor] else { return current }
            return want.parentMinor != current.parentMinor ? current : nil
        }
        // Children before their parents.
        deletions.sort { depth($0, actual) > depth($1, actual) || (depth($0, actual) == depth($1, actual) && $0.minor < $1.minor) }
        plan.steps += deletions.map(Step.delete)
        let deleted = Set(deletions.map(\.minor))
        // Parents before their children.
        let ordered = desired.sorted { depth($0, wanted) < depth($1, wanted) || (depth($0, wanted) == depth($1, wanted) && $0.minor < $1.minor) }
        for want in ordered {
            if let current = actual[want.minor], !deleted.contains(want.minor) {
                if current.rate != want.rate || current.ceil != want.ceil { plan.steps.append(.change(want)) }
            } else {
                plan.steps.append(.create(want))
            }
        }
        return plan
    }

    private static func depth(_ node: HTBClass, _ all: [UInt16: HTBClass]) -> Int {
        var depth = 0
        var parent = node.parentMinor
        while let minor = parent, depth < 8 {
            depth += 1
            parent = all[minor]?.parentMinor
        }
        return depth
    }
}
