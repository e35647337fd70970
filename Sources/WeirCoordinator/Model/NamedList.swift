import Foundation
import WeirCore

/// A named list that stages use by name; pushed to agents as a `lists:` drop-in. Its kind says what it holds:
/// `destinations` (IPs, CIDR networks, domains, in the form of enforce.nftables entries: a plain string, or an
/// object with `address` or `domain` and the flags `protected` and `allow_private`), `dns_rules` (dns.filter
/// rule lines) or `dns_records` (dns.filter records: `ADDRESS NAME...` strings, `{name, addresses}`,
/// `{name, alias}`).
struct NamedList: Codable, Sendable, Equatable {
    var name: String
    var kind: NamedListKind = .destinations
    var entries: [ListEntry]
    var updatedAt: Double

    init(name: String, kind: NamedListKind = .destinations, entries: [ListEntry], updatedAt: Double) {
        self.name = name
        self.kind = kind
        self.entries = entries
        self.updatedAt = updatedAt
    }

    enum CodingKeys: String, CodingKey { case name, kind, entries, updatedAt = "updated_at" }
}

enum ListEntry: Codable, Sendable, Equatable {
    case plain(String)
    case detailed(Detailed)

    struct Detailed: Codable, Sendable, Equatable {
        var address: String?
        var domain: String?
        var protected: Bool?
        var allowPrivate: Bool?
        /// dns_records: the name answered, with its addresses or the name it is an alias of.
        var name: String?
        var addresses: [String]?
        var alias: String?

        enum CodingKeys: String, CodingKey { case address, domain, protected, allowPrivate = "allow_private", name, addresses, alias }
    }

    /// What add/remove match on: the address, domain or record name as written.
    var key: String {
        switch self {
        case .plain(let text): return text
        case .detailed(let detailed): return detailed.address ?? detailed.domain ?? detailed.name ?? ""
        }
    }

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let text = try? container.decode(String.self) {
            self = .plain(text)
        } else {
            self = .detailed(try container.decode(Detailed.self))
        }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .plain(let text): try container.encode(text)
        case .detailed(let detailed): try container.encode(detailed)
        }
    }
}

enum NamedListFile {
    /// The bundle file holding every list. Its name has a dot before `.yaml`, which document names cannot,
    /// so it never collides with a document's file.
    static let fileName = "lists.weir.yaml"

    /// The lists as a drop-in. JSON is YAML; pretty-printed, so an error points at the entry's own line.
    /// A destinations list is written without its kind, as agents before kinds expect it.
    static func render(_ lists: [NamedList]) -> String {
        struct Body: Encodable {
            let kind: NamedListKind?
            let entries: [ListEntry]
        }
        let sections = ["lists": Dictionary(
            lists.map { ($0.name, Body(kind: $0.kind == .destinations ? nil : $0.kind, entries: $0.entries)) }, uniquingKeysWith: { $1 })]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(sections)) ?? Data("{}".utf8), as: UTF8.self) + "\n"
    }
}
