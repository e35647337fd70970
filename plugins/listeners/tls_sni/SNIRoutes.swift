import WeirCore

/// Server names to targets: exact names first, then `*.suffix` wildcards (the longest suffix wins, any
/// depth), then the default. Names compare case-insensitively, without a trailing dot.
struct SNIRoutes: Sendable, Hashable {
    var exact: [String: HostPort] = [:]
    /// Suffix (without `*.`) and target, longest suffix first.
    var wildcards: [(suffix: String, target: HostPort)] = []
    var fallback: HostPort?

    static func == (a: SNIRoutes, b: SNIRoutes) -> Bool {
        a.exact == b.exact && a.fallback == b.fallback && a.wildcards.map(\.suffix) == b.wildcards.map(\.suffix)
            && a.wildcards.map(\.target) == b.wildcards.map(\.target)
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(exact)
        hasher.combine(fallback)
        for (suffix, target) in wildcards {
            hasher.combine(suffix)
            hasher.combine(target)
        }
    }

    /// The target for a ClientHello's server name; nil name: the client sent none.
    func target(for serverName: String?) -> HostPort? {
        guard let serverName else { return fallback }
        var name = serverName.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        if let target = exact[name] { return target }
        if let wildcard = wildcards.first(where: { name.hasSuffix("." + $0.suffix) }) { return wildcard.target }
        return fallback
    }

    /// Reads `{name: host:port, "*.suffix": host:port}`.
    static func read(_ value: ConfigValue) -> SNIRoutes? {
        guard let options = value.mapping else { return nil }
        var routes = SNIRoutes()
        var valid = true
        for (name, _, targetValue) in options.allEntries() {
            guard let target = targetValue.parsed(HostPort.parse) else {
                valid = false
                continue
            }
            var key = name.lowercased()
            if key.hasSuffix(".") { key.removeLast() }
            let isWildcard = key.hasPrefix("*.")
            let host = isWildcard ? String(key.dropFirst(2)) : key
            guard !host.isEmpty, !host.contains("*"), host.split(separator: ".", omittingEmptySubsequences: false).allSatisfy({ !$0.isEmpty }) else {
                targetValue.error("\"\(name)\" is not a server name or a *.suffix wildcard")
                valid = false
                continue
            }
            if isWildcard { routes.wildcards.append((host, target)) } else { routes.exact[host] = target }
        }
        routes.wildcards.sort { $0.suffix.count > $1.suffix.count }
        return valid ? routes : nil
    }
}
