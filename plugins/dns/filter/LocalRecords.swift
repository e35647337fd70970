import WeirCore

/// Names answered from the configuration before any upstream is asked — the tunnel service's "DNS from a
/// table": addresses (`app.internal: [10.0.0.5, fd00::5]`), rewrites to another name (`alias.example:
/// target.example`, answered as a CNAME and the target's addresses), and wildcards (`*.dev.internal`, any
/// subdomain; an exact name wins over a wildcard, a longer wildcard over a shorter one).
struct LocalRecords: Sendable, Hashable {
    enum Record: Sendable, Hashable {
        case addresses([IPNetwork])
        case alias(String)
    }

    private(set) var exact: [String: Record] = [:]
    private(set) var wildcards: [String: Record] = [:]

    var isEmpty: Bool { exact.isEmpty && wildcards.isEmpty }

    /// Adds a hosts-format file's lines (`ADDRESS NAME [NAME...]`, names may be `*.wildcards`, `#` comments)
    /// where `records` has no entry for the name; one name's lines add up. Returns "LINE: problem" for the
    /// first bad line.
    mutating func addHostsFile(_ text: [UInt8]) -> String? {
        var added = Additions()
        for (index, raw) in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            if let problem = added.hostsLine(String(decoding: raw, as: UTF8.self)) { return "\(index + 1): \(problem)" }
        }
        merge(added)
        return nil
    }

    /// Adds a `dns_records` named list where the names are not already here: `ADDRESS NAME...` strings (as
    /// in a hosts file), `{name, addresses}` and `{name, alias}`. Errors are reported at the entry.
    mutating func addList(_ entries: [ConfigValue]) -> Bool {
        var added = Additions()
        var valid = true
        for entry in entries {
            if entry.isScalar {
                if let problem = added.hostsLine(entry.string ?? "") {
                    entry.error(problem)
                    valid = false
                }
                continue
            }
            guard let map = entry.mapping else {
                valid = false
                continue
            }
            let name = map.required("name")
            let addresses = map.optional("addresses")
            let alias = map.optional("alias")
            map.finish()
            guard let name, let key = Self.key(name.string ?? "") else {
                name?.error("a domain name (or *.domain)")
                valid = false
                continue
            }
            switch (addresses, alias) {
            case (let addresses?, nil):
                guard let parsed = Self.addressList(addresses) else {
                    valid = false
                    continue
                }
                added.addresses[key, default: []] += parsed
            case (nil, let alias?):
                guard let target = Self.key(alias.string ?? ""), !target.hasPrefix("*.") else {
                    alias.error("a domain name to answer as (a CNAME)")
                    valid = false
                    continue
                }
                added.aliases[key] = target
            default:
                entry.error("give exactly one of addresses and alias")
                valid = false
            }
        }
        if valid { merge(added) }
        return valid
    }

    /// Records gathered from one source before they join: a name's addresses add up within the source.
    private struct Additions {
        var addresses: [String: [IPNetwork]] = [:]
        var aliases: [String: String] = [:]

        /// `ADDRESS NAME [NAME...]`, `#` comments; nil when fine (or blank).
        mutating func hostsLine(_ text: String) -> String? {
            var line = text
            if let hash = line.firstIndex(of: "#") { line = String(line[..<hash]) }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard !fields.isEmpty else { return nil }
            guard fields.count >= 2, let address = try? IPNetwork.parse(fields[0]), address.isSingleAddress else {
                return "expected an IP address and one or more names"
            }
            for field in fields.dropFirst() {
                guard let key = LocalRecords.key(field) else { return "\"\(field)\" is not a domain name (or *.domain)" }
                addresses[key, default: []].append(address)
            }
            return nil
        }
    }

    /// A list of single IP addresses; nil, with the error at the value, otherwise.
    private static func addressList(_ value: ConfigValue) -> [IPNetwork]? {
        guard let items = value.sequence else { return nil }
        let addresses = items.compactMap { $0.parsed(IPNetwork.parse) }
        guard addresses.count == items.count, !addresses.isEmpty, addresses.allSatisfy(\.isSingleAddress) else {
            value.error("a list of IP addresses")
            return nil
        }
        return addresses
    }

    /// A name as records keep it: lower case, no trailing dot, `*.` kept for wildcards; nil when not a domain.
    private static func key(_ text: String) -> String? {
        var name = text.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        let domain = name.hasPrefix("*.") ? String(name.dropFirst(2)) : name
        return DomainRules.isDomain(Array(domain.utf8)) ? name : nil
    }

    /// Takes what a source added for the names that have no record yet.
    private mutating func merge(_ added: Additions) {
        let records = added.addresses.mapValues { Record.addresses($0) }.merging(added.aliases.mapValues { Record.alias($0) }) { first, _ in first }
        for (key, record) in records {
            if key.hasPrefix("*.") {
                let domain = String(key.dropFirst(2))
                if wildcards[domain] == nil { wildcards[domain] = record }
            } else if exact[key] == nil {
                exact[key] = record
            }
        }
    }

    /// Reads the `records` mapping; errors at the entry.
    static func decode(_ value: ConfigValue) -> LocalRecords? {
        guard let map = value.mapping else { return nil }
        var records = LocalRecords()
        var valid = true
        for (key, _, item) in map.allEntries() {
            guard let name = Self.key(key) else {
                item.error("\"\(key)\" is not a domain name (or *.domain)")
                valid = false
                continue
            }
            let record: Record
            if item.isScalar {
                guard let text = item.string?.lowercased(), DomainRules.isDomain(Array(text.utf8)) else {
                    item.error("a list of IP addresses, or a domain name to answer as (a CNAME)")
                    valid = false
                    continue
                }
                record = .alias(text.hasSuffix(".") ? String(text.dropLast()) : text)
            } else {
                guard let addresses = Self.addressList(item) else {
                    valid = false
                    continue
                }
                record = .addresses(addresses)
            }
            if name.hasPrefix("*.") { records.wildcards[String(name.dropFirst(2))] = record } else { records.exact[name] = record }
        }
        return valid ? records : nil
    }

    func lookup(_ name: String) -> Record? {
        if let record = exact[name] { return record }
        // Asked for every query: without wildcards, no walk over the name's suffixes.
        guard !wildcards.isEmpty else { return nil }
        var rest = Substring(name)
        while let dot = rest.firstIndex(of: ".") {
            rest = rest[rest.index(after: dot)...]
            if let record = wildcards[String(rest)] { return record }
        }
        return nil
    }
}
