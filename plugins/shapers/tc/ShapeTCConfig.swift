import CWeirBPF
import Foundation
import WeirCore

/// `shape.tc`: kernel traffic shaping with HTB — a rate and a ceiling for a forward pipeline, a whole
/// interface, each client address or each packet mark, with named sub-classes that borrow from each other.
public struct ShapeTCConfig: StageConfig, Hashable {
    public enum Direction: String, Sendable, CaseIterable {
        case egress, ingress, both

        var sides: [ShapeSide] {
            switch self {
            case .egress: [.egress]
            case .ingress: [.ingress]
            case .both: [.egress, .ingress]
            }
        }
    }

    /// What gets a class of its own.
    public enum Per: String, Sendable, CaseIterable {
        case pipeline
        case clientIP = "client_ip"
        case mark
    }

    /// Which packets a named class takes. Unset fields do not take part; at least one is set.
    public struct Match: Sendable, Hashable, Codable {
        public var mark: UInt32?
        public var markMask: UInt32 = 0xFFFF_FFFF
        public var dscp: UInt8?
        public var proto: String?  // "tcp" or "udp"
        public var ports: ClosedRange<Int>?

        var isEmpty: Bool { mark == nil && dscp == nil && proto == nil && ports == nil }
    }

    /// Clients (addresses or networks) whose on-demand classes get their own rate: per-user plans.
    public struct ClientRate: Sendable, Hashable, Codable {
        public var clients: [IPNetwork]
        /// Peers of the pipeline's wireguard stage by name: their tunnel addresses (resolved when the stage
        /// starts and reconciles). Optional so records written before it existed decode.
        public var peers: [String]?
        /// Bytes per second.
        public var rate: UInt64
        public var ceil: UInt64
        /// With a name the entry's clients share one class, labelled so (a device's IPv4 and IPv6 tunnel
        /// addresses under one plan rate); without, each client gets a class of its own.
        public var name: String? = nil
    }

    public struct NamedClass: Sendable, Hashable {
        public var name: String
        /// Bytes per second.
        public var rate: UInt64
        public var ceil: UInt64
        public var match: Match
    }

    public static let type = "shape.tc"
    public static let summary = "Shape traffic in the kernel with HTB: rate and ceiling per pipeline, client, mark or class."
    public static let role = StageRole.service
    public static let options = [
        OptionDoc(
            "interface", "name", default: "the listener's interfaces",
            "Interface to shape. Without it the stage must sit in a forward pipeline and shapes the interfaces that carry its listener's address."),
        OptionDoc("rate", "rate", "Guaranteed rate: 50mbit, 1gbit, 10MiB/s (required). Per client or mark with per: client_ip|mark."),
        OptionDoc("ceil", "rate", default: "rate", "Ceiling the traffic may borrow up to when the parent has spare capacity."),
        OptionDoc("direction", "egress|ingress|both", default: "egress", "Shape traffic leaving the interface, arriving (through an IFB device weir owns), or both."),
        OptionDoc("per", "pipeline|client_ip|mark", default: "pipeline", "One class for all the stage's traffic, or one per client address or packet mark, created on demand."),
        OptionDoc("total", "rate", default: "no cap", "With per: client_ip|mark, a ceiling for all clients (or marks) together."),
        OptionDoc("max_clients", "count", default: "1024", "With per: client_ip|mark, at most this many classes; beyond it new clients share one class."),
        OptionDoc("idle_timeout", "duration", default: "5m", "With per: client_ip|mark, a class that passed no traffic this long is removed."),
        OptionDoc("classes", "[class]", default: "none", "Named sub-classes: {name, rate, ceil, match: {mark, mark_mask, dscp, protocol, port}}; first match wins."),
        OptionDoc(
            "client_rates", "[{name, clients, rate, ceil}]", default: "none",
            "With per: client_ip, other rates for some clients (addresses, networks or the pipeline's wireguard peers by name; first match wins): per-user plans. With a name, the entry's clients (addresses or peers) share one class."),
    ]
    public static var sample: String { String(decoding: PackageResources.shape_tc_sample_yaml, as: UTF8.self) }

    public let interface: String?
    /// Bytes per second.
    public let rate: UInt64
    public let ceil: UInt64
    public let direction: Direction
    public let per: Per
    public let total: UInt64?
    public let maxClients: Int
    public let idleTimeout: Duration
    public let classes: [NamedClass]
    public var clientRates: [ClientRate]

    /// Class names the stage uses for its own classes.
    static let reservedNames: Set<String> = ["total", "default"]

    public static func decode(_ options: ConfigMapping) -> ShapeTCConfig? {
        var valid = true
        /// Reads an optional key; a present but invalid value clears `valid`.
        func optional<T>(_ key: String, _ read: (ConfigValue) -> T?) -> (value: T?, at: ConfigValue?) {
            guard let at = options.optional(key) else { return (nil, nil) }
            let value = read(at)
            if value == nil { valid = false }
            return (value, at)
        }
        let interface = optional("interface") { value -> String? in
            guard let name = value.string else { return nil }
            guard (1...15).contains(name.utf8.count), !name.contains("/"), !name.contains(where: \.isWhitespace) else {
                value.error("not an interface name: \"\(name)\"")
                return nil
            }
            return name
        }.value
        let rate = options.required("rate").flatMap(Self.rate)
        let (ceilOption, ceilValue) = optional("ceil", Self.rate)
        let direction = options.optional("direction", default: Direction.egress) { $0.oneOf(Direction.self) }
        let per = options.optional("per", default: Per.pipeline) { $0.oneOf(Per.self) }
        let (total, totalValue) = optional("total", Self.rate)
        let maxClients = options.optional("max_clients", default: 1024) { $0.int(in: 1...16384) }
        let idleTimeout = options.optional("idle_timeout", default: Duration.seconds(300)) { $0.duration(atLeast: .seconds(1)) }
        let (classesOption, classesValue) = optional("classes") { value -> [NamedClass]? in
            guard let items = value.sequence else { return nil }
            let decoded = items.map(decodeClass)
            return decoded.allSatisfy { $0 != nil } ? decoded.compactMap { $0 } : nil
        }
        let classes = classesOption ?? []
        let (clientRatesOption, clientRatesValue) = optional("client_rates") { value -> [ClientRate]? in
            guard let items = value.sequence else { return nil }
            let decoded = items.map(decodeClientRate)
            return decoded.allSatisfy { $0 != nil } ? decoded.compactMap { $0 } : nil
        }
        let clientRates = clientRatesOption ?? []
        guard valid, let rate, let direction, let per, let maxClients, let idleTimeout else { return nil }
        let ceil = ceilOption ?? rate
        if ceil < rate {
            ceilValue?.error("ceil (\(RateText.bits(ceil))) is below rate (\(RateText.bits(rate)))")
            valid = false
        }
        if total != nil, per == .pipeline {
            totalValue?.error("total only applies with per: client_ip or per: mark (with per: pipeline, ceil is the cap)")
            valid = false
        }
        // Named classes sit beside the per-client (or pipeline) traffic under one parent.
        let parentCeil = per == .pipeline ? ceil : (total ?? ceil)
        var names = Set<String>()
        var guaranteed: UInt64 = 0
        for (index, named) in classes.enumerated() {
            let at = classesValue?.sequence?[index]
            if Self.reservedNames.contains(named.name) {
                at?.mapping?.optional("name")?.error("\"\(named.name)\" is the name of one of the stage's own classes")
                valid = false
            }
            if !names.insert(named.name).inserted {
                at?.mapping?.optional("name")?.error("duplicate class name \"\(named.name)\"")
                valid = false
            }
            if named.ceil > parentCeil {
                at?.mapping?.optional("ceil")?.error(
                    "the class's ceil (\(RateText.bits(named.ceil))) is above the stage's (\(RateText.bits(parentCeil)))")
                valid = false
            }
            guaranteed += named.rate
        }
        if per == .pipeline, guaranteed > rate {
            classesValue?.error(
                "the classes guarantee \(RateText.bits(guaranteed)) in all, more than the stage's rate (\(RateText.bits(rate)))")
            valid = false
        }
        if !clientRates.isEmpty, per != .clientIP {
            clientRatesValue?.error("client_rates only applies with per: client_ip")
            valid = false
        }
        for (index, clientRate) in clientRates.enumerated() where clientRate.ceil > (total ?? clientRate.ceil) {
            clientRatesValue?.sequence?[index].mapping?.optional("ceil")?.error(
                "the ceil (\(RateText.bits(clientRate.ceil))) is above total (\(RateText.bits(total ?? 0)))")
            valid = false
        }
        // Named entries are classes of the stage: their names are labels beside the named classes'. (The
        // entry's place is looked up only for an error: `sequence` builds the list each time it is asked.)
        var rateNames = Set<String>()
        for (index, clientRate) in clientRates.enumerated() {
            guard let name = clientRate.name else { continue }
            if Self.reservedNames.contains(name) || names.contains(name) || !rateNames.insert(name).inserted {
                clientRatesValue?.sequence?[index].mapping?.optional("name")?.error("\"\(name)\" already names a class of this stage")
                valid = false
            }
        }
        if classes.count > Int(WEIR_SHAPE_MAX_RULES) {
            classesValue?.error("at most \(WEIR_SHAPE_MAX_RULES) classes")
            valid = false
        }
        guard valid else { return nil }
        return ShapeTCConfig(
            interface: interface, rate: rate, ceil: ceil, direction: direction, per: per, total: total,
            maxClients: maxClients, idleTimeout: idleTimeout, classes: classes, clientRates: clientRates)
    }

    /// A rate in bytes per second, at least 1kbit.
    static func rate(_ value: ConfigValue) -> UInt64? {
        guard let bytes = value.parsed(ByteRateParser.parse) else { return nil }
        guard bytes >= 125 else {
            value.error("below the smallest rate HTB shapes well (1kbit)")
            return nil
        }
        guard bytes < 1e13 else {
            value.error("above 80tbit")
            return nil
        }
        return UInt64(bytes.rounded())
    }

    private static func decodeClass(_ value: ConfigValue) -> NamedClass? {
        guard let options = value.mapping else { return nil }
        defer { options.finish() }
        let name = options.required("name").flatMap { value -> String? in
            guard let name = value.string else { return nil }
            let allowed = name.allSatisfy { $0.isLetter || $0.isNumber || "_-.".contains($0) }
            guard !name.isEmpty, name.count <= 64, allowed else {
                value.error("class names are 1-64 letters, digits, '_', '-' or '.'")
                return nil
            }
            return name
        }
        let rate = options.required("rate").flatMap(Self.rate)
        let ceilValue = options.optional("ceil")
        let ceil = ceilValue.map(Self.rate)
        let match = options.required("match").flatMap(decodeMatch)
        guard let name, let rate, let match else { return nil }
        if let ceil, ceil == nil { return nil }  // present but invalid
        let classCeil = (ceil ?? nil) ?? rate
        if classCeil < rate {
            ceilValue?.error("ceil (\(RateText.bits(classCeil))) is below rate (\(RateText.bits(rate)))")
            return nil
        }
        return NamedClass(name: name, rate: rate, ceil: classCeil, match: match)
    }

    private static func decodeClientRate(_ value: ConfigValue) -> ClientRate? {
        guard let options = value.mapping else { return nil }
        defer { options.finish() }
        var peers: [String] = []
        let clients = options.required("clients").flatMap { value -> [IPNetwork]? in
            guard let items = value.sequence, !items.isEmpty else {
                value.error("a list of addresses, networks or peer names")
                return nil
            }
            var parsed: [IPNetwork] = []
            for item in items {
                guard let text = item.string else { return nil }
                if let network = try? IPNetwork.parse(text) {
                    parsed.append(network)
                } else if PeerNames.isValid(text) {
                    peers.append(text)
                } else {
                    item.error("not an address, a network or a peer name: \"\(text)\"")
                    return nil
                }
            }
            return parsed
        }
        let rate = options.required("rate").flatMap(Self.rate)
        let ceilValue = options.optional("ceil")
        let ceil = ceilValue.map(Self.rate)
        let nameValue = options.optional("name")
        let name = nameValue.map { value -> String? in
            guard let name = value.string, PeerNames.isValid(name) else {
                value.error("a name is 1-64 letters, digits, '-', '_', '.' or '@'")
                return nil
            }
            return name
        }
        guard let clients, let rate else { return nil }
        if let ceil, ceil == nil { return nil }
        if let name, name == nil { return nil }
        let clientCeil = (ceil ?? nil) ?? rate
        if clientCeil < rate {
            ceilValue?.error("ceil (\(RateText.bits(clientCeil))) is below rate (\(RateText.bits(rate)))")
            return nil
        }
        if nameValue != nil, let network = clients.first(where: { !$0.isSingleAddress }) {
            options.optional("clients")?.error(
                "\(network) is a network: the clients of a named entry share one class, so they are single addresses or peer names (leave out name for a class per client of a network)")
            return nil
        }
        return ClientRate(clients: clients, peers: peers.isEmpty ? nil : peers, rate: rate, ceil: clientCeil, name: name ?? nil)
    }

    private static func decodeMatch(_ value: ConfigValue) -> Match? {
        guard let options = value.mapping else { return nil }
        defer { options.finish() }
        var match = Match()
        var valid = true
        if let mark = options.optional("mark") {
            if let number = unsigned32(mark) { match.mark = number } else { valid = false }
        }
        if let mask = options.optional("mark_mask") {
            if let number = unsigned32(mask), number != 0 { match.markMask = number } else { valid = false }
        }
        if let dscp = options.optional("dscp") {
            if let number = dscp.int(in: 0...63) { match.dscp = UInt8(number) } else { valid = false }
        }
        if let proto = options.optional("protocol") {
            if let text = proto.string, ["tcp", "udp"].contains(text) {
                match.proto = text
            } else {
                proto.error("protocol is tcp or udp")
                valid = false
            }
        }
        if let port = options.optional("port") {
            if let range = portRange(port) { match.ports = range } else { valid = false }
        }
        guard valid else { return nil }
        if match.isEmpty {
            value.error("match needs at least one of: mark, dscp, protocol, port")
            return nil
        }
        if let mark = match.mark, mark & match.markMask != mark {
            value.error("mark 0x\(String(mark, radix: 16)) has bits outside mark_mask 0x\(String(match.markMask, radix: 16))")
            return nil
        }
        return match
    }

    /// `0x20`, `32`.
    private static func unsigned32(_ value: ConfigValue) -> UInt32? {
        guard let text = value.string else { return nil }
        let parsed = text.lowercased().hasPrefix("0x") ? UInt32(text.dropFirst(2), radix: 16) : UInt32(text)
        guard let parsed else {
            value.error("expected a 32-bit number such as 0x20 or 32, found \"\(text)\"")
            return nil
        }
        return parsed
    }

    /// `443` or `8000-8100`.
    private static func portRange(_ value: ConfigValue) -> ClosedRange<Int>? {
        guard let text = value.string else { return nil }
        let parts = text.split(separator: "-", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        if parts.count == 1, let port = parts[0], (1...65535).contains(port) { return port...port }
        if parts.count == 2, let low = parts[0], let high = parts[1], (1...65535).contains(low), (low...65535).contains(high) {
            return low...high
        }
        value.error("expected a port (443) or a range (8000-8100), found \"\(text)\"")
        return nil
    }

    /// Peer names in client_rates refer to the peers of a `wireguard` stage in the same pipeline.
    public func pipelineError(stages: [any StageConfig]) -> String? {
        PeerNames.unknownError(clientRates.flatMap { $0.peers ?? [] }, in: stages, what: "client_rates")
    }

    public func placementError(listener: (any ListenerConfig)?) -> String? {
        if interface == nil, listener == nil {
            return "interface: required in a pipeline without a listen.* stage (or place the stage in a forward pipeline to shape its traffic)"
        }
        if let listener, listener.bindAddress.port == 0 {
            return "cannot shape the traffic of a listener on port 0"
        }
        return nil
    }

    /// One stage shapes a scope (all traffic, or its listener's port) on one side of an interface: a second
    /// would be refused when it starts. Without `interface` the interfaces are found at run time, and the
    /// listener's port (one pipeline per port) keeps scopes apart.
    public func exclusiveClaims(listener: (any ListenerConfig)?) -> [StageClaim] {
        guard let interface else { return [] }
        let scope = listener.map { "\($0.transport == .datagram ? "udp" : "tcp") port \($0.bindAddress.port)" } ?? "all traffic"
        return direction.sides.map { side in
            StageClaim(
                key: "shape.tc \(interface) \(side.rawValue) \(scope)", description: "shaping \(scope) on \(interface) \(side.rawValue)",
                reason: "one shape.tc stage per interface, direction and scope (use classes: for several rates)")
        }
    }

    public func makeStage(_ context: StageContext) -> any Stage { ShapeTC(config: self, context: context) }

    /// Classes of pipelines that no longer shape (removed while the agent was stopped or left by a crash) are
    /// removed; an interface nobody shapes any more gets its qdiscs back as they were.
    public static func sweep(keeping pipelines: Set<String>, environment: StageEnvironment) async -> [String] {
        ShapingDevices.shared.sweep(keeping: pipelines, stateDirectory: environment.stateDirectory)
        return []
    }
}

/// Rates as tc writes them, for messages and labels.
enum RateText {
    /// Bytes per second as bits: `50mbit`.
    static func bits(_ bytesPerSecond: UInt64) -> String {
        let bits = Double(bytesPerSecond) * 8
        for (scale, unit) in [(1e12, "tbit"), (1e9, "gbit"), (1e6, "mbit"), (1e3, "kbit")] where bits >= scale {
            let value = bits / scale
            return (value == value.rounded() ? String(Int(value)) : String(format: "%.2f", value)) + unit
        }
        return "\(Int(bits))bit"
    }
}
