import Foundation

/// A named list of destinations (IPs, CIDR networks, domains) that stages use by name; pushed to agents as a
/// `lists:` drop-in. Entries keep the form of enforce.nftables entries: a plain string, or an object with
/// `address` or `domain` and the flags `protected` and `allow_private`.
struct NamedList: Codable, Sendable, Equatable {
    var name: String
    var entries: [ListEntry]
    var updatedAt: Double

    enum CodingKeys: String, CodingKey { case name, entries, updatedAt = "updated_at" }
}

enum ListEntry: Codable, Sendable, Equatable {
    case plain(String)
    case detailed(Detailed)

    struct Detailed: Codable, Sendable, Equatable {
        var address: String?
        var domain: String?
        var protected: Bool?
        var allowPrivate: Bool?

        enum CodingKeys: String, CodingKey { case address, domain, protected, allowPrivate = "allow_private" }
    }

    /// What add/remove match on: the address or domain as written.
    var key: String {
        switch self {
        case .plain(let text): return text
        case .detailed(let detailed): return detailed.address ?? detailed.domain ?? ""
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
    static func render(_ lists: [NamedList]) -> String {
        struct Body: Encodable { let entries: [ListEntry] }
        let sections = ["lists": Dictionary(lists.map { ($0.name, Body(entries: $0.entries)) }, uniquingKeysWith: { $1 })]
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(sections)) ?? Data("{}".utf8), as: UTF8.self) + "\n"
    }
}
