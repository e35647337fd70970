/// Block and allow rules for domain names, in the list formats people already have, matched by a compact
/// structure: a sorted array of 64-bit FNV-1a hashes of the rules' domains beside one packed word each
/// (list, line, kind) — 16 bytes per rule, whatever the domain's length. A name is looked up by hashing each
/// of its suffixes (`a.b.example.com`, `b.example.com`, `example.com`, `com`) and binary-searching them.
/// Two different domains sharing a 64-bit hash would match each other; among a million rules that happens
/// for about one query in 2^44.
struct DomainRules: Sendable {
    enum Kind: UInt8, Sendable {
        /// The domain and its subdomains.
        case block = 0
        case allow = 1
        /// Only subdomains (`*.example.com`).
        case blockSubdomains = 2
        case allowSubdomains = 3

        var allows: Bool { self == .allow || self == .allowSubdomains }
        var subdomainsOnly: Bool { self == .blockSubdomains || self == .allowSubdomains }
    }

    /// What decided a name: the rule's list and line.
    struct Decision: Equatable, Sendable {
        var allowed: Bool
        var list: String
        var line: Int
    }

    private var hashes: [UInt64] = []
    /// list index << 40 | kind << 32 | line.
    private var packed: [UInt64] = []
    private(set) var lists: [String] = []
    /// Rules per list, for weir_dns_rules{list}.
    private(set) var counts: [String: Int] = [:]
    /// Lines that were not rules (unsupported adblock options, garbage), per list.
    private(set) var skipped: [String: Int] = [:]

    var count: Int { hashes.count }
    var bytesPerRule: Int { 16 }

    init() {}

    static func hash<C: Collection>(_ bytes: C) -> UInt64 where C.Element == UInt8 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in bytes {
            hash ^= UInt64(byte >= 65 && byte <= 90 ? byte + 32 : byte)
            hash &*= 0x100_0000_01b3
        }
        return hash
    }

    /// Builds the matcher from lists: (name, bytes, whether every rule of it allows).
    init(lists sources: [(name: String, text: [UInt8], allowList: Bool)]) {
        var entries: [(UInt64, UInt64)] = []
        for (index, source) in sources.enumerated() {
            lists.append(source.name)
            var added = 0
            var bad = 0
            source.text.withUnsafeBufferPointer { text in
                Self.parse(text, allowList: source.allowList) { domain, kind, line in
                    entries.append((Self.hash(domain), UInt64(index) << 40 | UInt64(kind.rawValue) << 32 | UInt64(line)))
                    added += 1
                } skipped: { bad += 1 }
            }
            counts[source.name, default: 0] += added
            if bad > 0 { skipped[source.name, default: 0] += bad }
        }
        entries.sort { $0.0 < $1.0 }
        hashes = entries.map(\.0)
        packed = entries.map(\.1)
    }

    /// The decision for `name` (lowercase, no final dot): an allow rule anywhere among its suffixes wins
    /// over a block rule; nil when no rule matches.
    func decide(_ name: String) -> Decision? {
        guard !hashes.isEmpty else { return nil }
        var block: UInt64?
        var allow: UInt64?
        var utf8 = Array(name.utf8)
        if utf8.last == UInt8(ascii: ".") { utf8.removeLast() }
        var start = 0
        while start < utf8.count {
            let isWhole = start == 0
            let hash = Self.hash(utf8[start...])
            var index = lowerBound(hash)
            while index < hashes.count, hashes[index] == hash {
                let word = packed[index]
                let kind = Kind(rawValue: UInt8((word >> 32) & 0xFF)) ?? .block
                if !(kind.subdomainsOnly && isWhole) {
                    if kind.allows { allow = allow ?? word } else { block = block ?? word }
                }
                index += 1
            }
            guard let dot = utf8[start...].firstIndex(of: UInt8(ascii: ".")) else { break }
            start = dot + 1
        }
        guard let word = allow ?? block else { return nil }
        return Decision(allowed: allow != nil, list: lists[Int(word >> 40)], line: Int(word & 0xFFFF_FFFF))
    }

    private func lowerBound(_ hash: UInt64) -> Int {
        var low = 0, high = hashes.count
        while low < high {
            let middle = (low + high) / 2
            if hashes[middle] < hash { low = middle + 1 } else { high = middle }
        }
        return low
    }

    // MARK: - List formats

    /// Reads every line: hosts files (`0.0.0.0 ads.example.com`, several names per line), plain domains,
    /// adblock-style `||domain^` (block) and `@@||domain^` (allow), `*.domain` (subdomains only). Comments
    /// (`#`, `!`, `[Adblock…]`) and blank lines are not rules; other lines — adblock rules with options or
    /// paths, text that is not a domain — are counted as skipped.
    static func parse(
        _ text: UnsafeBufferPointer<UInt8>, allowList: Bool, rule: (UnsafeBufferPointer<UInt8>.SubSequence, Kind, Int) -> Void, skipped: () -> Void
    ) {
        var lineStart = 0
        var lineNumber = 0
        while lineStart < text.count {
            lineNumber += 1
            var lineEnd = lineStart
            while lineEnd < text.count, text[lineEnd] != 10 { lineEnd += 1 }
            defer { lineStart = lineEnd + 1 }
            var line = trim(text[lineStart..<lineEnd])
            guard let first = line.first, first != UInt8(ascii: "#"), first != UInt8(ascii: "!"), first != UInt8(ascii: "[") else { continue }
            // A comment after the rule.
            if let hashMark = line.firstIndex(of: UInt8(ascii: "#")) { line = trim(line[..<hashMark]) }
            var allow = allowList
            if line.starts(with: "@@".utf8) {
                allow = true
                line = line.dropFirst(2)
            }
            if line.starts(with: "||".utf8) {
                // Adblock: ||domain^ and nothing after it (options, paths: not a DNS rule).
                guard line.last == UInt8(ascii: "^"), line.count > 3 else {
                    skipped()
                    continue
                }
                let domain = line.dropFirst(2).dropLast()
                if isDomain(domain) { rule(domain, allow ? .allow : .block, lineNumber) } else { skipped() }
                continue
            }
            // Hosts: an address, then names.
            let words = line.split(whereSeparator: { $0 == 32 || $0 == 9 })
            if words.count >= 2, isAddress(words[0]) {
                for name in words.dropFirst() where !isHostsPlaceholder(name) {
                    if isDomain(name) { rule(name, allow ? .allow : .block, lineNumber) } else { skipped() }
                }
                continue
            }
            guard words.count == 1 else {
                skipped()
                continue
            }
            if line.starts(with: "*.".utf8) {
                let domain = line.dropFirst(2)
                if isDomain(domain) { rule(domain, allow ? .allowSubdomains : .blockSubdomains, lineNumber) } else { skipped() }
                continue
            }
            var domain = line
            if domain.last == UInt8(ascii: ".") { domain = domain.dropLast() }
            if isDomain(domain) { rule(domain, allow ? .allow : .block, lineNumber) } else { skipped() }
        }
    }

    private static func trim(_ line: UnsafeBufferPointer<UInt8>.SubSequence) -> UnsafeBufferPointer<UInt8>.SubSequence {
        var line = line
        while let first = line.first, first == 32 || first == 9 || first == 13 { line = line.dropFirst() }
        while let last = line.last, last == 32 || last == 9 || last == 13 { line = line.dropLast() }
        return line
    }

    /// Letters, digits, '-', '_' in labels of 1-63 bytes, at most 253 bytes; the last label is not all digits
    /// (no top-level domain is, so `9.9.9.9` in a list is an address, not a rule).
    static func isDomain<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        guard !bytes.isEmpty, bytes.count <= 253 else { return false }
        var label = 0
        var digitsOnly = true
        for byte in bytes {
            if byte == UInt8(ascii: ".") {
                guard label > 0 else { return false }
                label = 0
                digitsOnly = true
                continue
            }
            let digit = byte >= 48 && byte <= 57
            let ok = (byte >= 97 && byte <= 122) || (byte >= 65 && byte <= 90) || digit || byte == 45 || byte == 95
            guard ok else { return false }
            if !digit { digitsOnly = false }
            label += 1
            guard label <= 63 else { return false }
        }
        return label > 0 && !digitsOnly
    }

    private static func isAddress<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        // Digits and dots (IPv4) or hex digits and colons (IPv6), with at least one separator.
        var separators = 0
        for byte in bytes {
            if byte == UInt8(ascii: ".") || byte == UInt8(ascii: ":") {
                separators += 1
                continue
            }
            let hex = (byte >= 48 && byte <= 57) || (byte >= 97 && byte <= 102) || (byte >= 65 && byte <= 70)
            guard hex else { return false }
        }
        return separators >= 2
    }

    private static let placeholders: Set<[UInt8]> = Set(
        ["localhost", "localhost.localdomain", "local", "broadcasthost", "ip6-localhost", "ip6-loopback", "ip6-localnet", "ip6-mcastprefix",
         "ip6-allnodes", "ip6-allrouters", "ip6-allhosts", "0.0.0.0"].map { Array($0.utf8) })

    /// The names hosts files list for the machine itself, which no blocklist means to block.
    private static func isHostsPlaceholder<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        placeholders.contains(Array(bytes))
    }
}
