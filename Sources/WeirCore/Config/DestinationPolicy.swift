/// Which destinations the clients of a listener may name (SOCKS5, HTTP CONNECT): `destinations: {allow, deny}`
/// with CIDRs and domain suffixes. `example.com` matches it and every name under it. Deny wins; with an allow
/// list, only what it lists passes. Networks apply to destinations given as IP addresses, domains to names.
public struct DestinationPolicy: Sendable, Hashable {
    public enum Rule: Sendable, Hashable, CustomStringConvertible {
        case network(IPNetwork)
        case domain(String)

        public var description: String {
            switch self {
            case .network(let network): network.description
            case .domain(let domain): domain
            }
        }

        func matches(_ destination: Destination) -> Bool {
            switch self {
            case .network(let network):
                guard let bytes = IPNetwork.addressBytes(destination.host) else { return false }
                return network.contains(IPNetwork(bytes: bytes, prefix: bytes.count * 8))
            case .domain(let suffix):
                let host = destination.host.lowercased().trimmingSuffix(".")
                return host == suffix || host.hasSuffix("." + suffix)
            }
        }
    }

    public var allow: [Rule]
    public var deny: [Rule]

    public init(allow: [Rule] = [], deny: [Rule] = []) {
        self.allow = allow
        self.deny = deny
    }

    /// Everything is allowed.
    public static let open = DestinationPolicy()

    public func permits(_ destination: Destination) -> Bool {
        if deny.contains(where: { $0.matches(destination) }) { return false }
        return allow.isEmpty || allow.contains { $0.matches(destination) }
    }

    /// Whether the address a name resolved to may be used: denied networks stay denied behind a name (the
    /// name itself already passed `permits`, so the allow list is not asked again).
    public func permitsResolved(_ address: String) -> Bool {
        !deny.contains { $0.matches(Destination(host: address, port: 0)) }
    }

    /// Reads `{allow: [...], deny: [...]}`.
    public static func read(_ value: ConfigValue) -> DestinationPolicy? {
        guard let options = value.mapping else { return nil }
        defer { options.finish() }
        let allow = options.optional("allow", default: [Rule]()) { rules($0) }
        let deny = options.optional("deny", default: [Rule]()) { rules($0) }
        guard let allow, let deny else { return nil }
        return DestinationPolicy(allow: allow, deny: deny)
    }

    private static func rules(_ value: ConfigValue) -> [Rule]? {
        guard let items = value.sequence else { return nil }
        let rules = items.map { item -> Rule? in
            guard let text = item.string?.trimmingCharacters(in: " ") else { return nil }
            if let network = try? IPNetwork.parse(text) { return .network(network) }
            let domain = text.lowercased().trimmingPrefix(".").trimmingSuffix(".")
            let labels = domain.split(separator: ".", omittingEmptySubsequences: false)
            let valid = !labels.isEmpty && labels.allSatisfy { label in
                !label.isEmpty && label.count <= 63 && label.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }
            }
            guard valid, !domain.isEmpty, domain.contains(where: \.isLetter) else {
                item.error("not a network (10.0.0.0/8, 2001:db8::/32) or a domain (example.com): \"\(text)\"")
                return nil
            }
            return .domain(domain)
        }
        return rules.contains { $0 == nil } ? nil : rules.compactMap { $0 }
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
    fileprivate func trimmingPrefix(_ prefix: String) -> String { hasPrefix(prefix) ? String(dropFirst(prefix.count)) : self }
    fileprivate func trimmingCharacters(in characters: String) -> String {
        String(drop { characters.contains($0) }.reversed().drop { characters.contains($0) }.reversed())
    }
}
