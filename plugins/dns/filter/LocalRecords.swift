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
        var added: [String: (wildcard: Bool, addresses: [IPNetwork])] = [:]
        for (index, raw) in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).enumerated() {
            var line = String(decoding: raw, as: UTF8.self)
            if let hash = line.firstIndex(of: "#") { line = String(line[..<hash]) }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" }).map(String.init)
            guard !fields.isEmpty else { continue }
            guard fields.count >= 2, let address = try? IPNetwork.parse(fields[0]), address.isSingleAddress else {
                return "\(index + 1): expected an IP address and one or more names"
            }
            for field in fields.dropFirst() {
                var name = field.lowercased()
                if name.hasSuffix(".") { name.removeLast() }
                let wildcard = name.hasPrefix("*.")
                let domain = wildcard ? String(name.dropFirst(2)) : name
                guard DomainRules.isDomain(Array(domain.utf8)) else { return "\(index + 1): \"\(field)\" is not a domain name (or *.domain)" }
                let key = (wildcard ? "*." : "") + domain
                added[key, default: (wildcard, [])].addresses.append(address)
            }
        }
        for (key, entry) in added {
            let domain = entry.wildcard ? String(key.dropFirst(2)) : key
            if entry.wildcard {
                if wildcards[domain] == nil { wildcards[domain] = .addresses(entry.addresses) }
            } else if exact[domain] == nil {
                exact[domain] = .addresses(entry.addresses)
            }
        }
        return nil
    }

    /// Reads the `records` mapping; errors at the entry.
    static func decode(_ value: ConfigValue) -> LocalRecords? {
        guard let map = value.mapping else { return nil }
        var records = LocalRecords()
        var valid = true
        for (key, _, item) in map.allEntries() {
            let name = key.lowercased().hasSuffix(".") ? String(key.lowercased().dropLast()) : key.lowercased()
            let isWildcard = name.hasPrefix("*.")
            let domain = isWildcard ? String(name.dropFirst(2)) : name
            guard DomainRules.isDomain(Array(domain.utf8)) else {
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
                guard let items = item.sequence else {
                    valid = false
                    continue
                }
                let addresses = items.compactMap { $0.parsed(IPNetwork.parse) }
                guard addresses.count == items.count, !addresses.isEmpty, addresses.allSatisfy(\.isSingleAddress) else {
                    item.error("a list of IP addresses")
                    valid = false
                    continue
                }
                record = .addresses(addresses)
            }
            if isWildcard { records.wildcards[domain] = record } else { records.exact[domain] = record }
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
