import Foundation
import WeirCore

/// public -> entry agent -> encrypted -> exit agent -> target, wired in one call. A relay renders into two
/// pipeline documents with a generated key: the entry's (listen, encrypt, dial the exit) for an agent or a
/// label group, and the exit's (listen, decrypt, dial the target) for one agent.
struct Relay: Codable, Sendable, Equatable {
    struct Entry: Codable, Sendable, Equatable {
        /// One agent, or every agent a selector matches.
        var agent: String?
        var selector: LabelSelector?
    }

    struct Exit: Codable, Sendable, Equatable {
        var agent: String
        /// Where the exit listens, e.g. 0.0.0.0:8388.
        var listen: String
        /// Where entries dial it, e.g. exit.example.net:8388.
        var address: String
    }

    var name: String
    var entry: Entry
    var exit: Exit
    /// Where entry agents accept clients.
    var listen: String
    /// Where the exit connects.
    var target: String
    /// transform.aead's cipher.
    var cipher: String
    /// The generated pre-shared key (never shown by the API).
    var key: String
    var createdAt: Double

    enum CodingKeys: String, CodingKey { case name, entry, exit, listen, target, cipher, key, createdAt = "created_at" }

    static let ciphers = ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]

    /// The pipeline id on both agents.
    var pipelineID: String { "relay-\(name)" }
    /// Document names with a dot, which operators' documents cannot have: no collision.
    var entryDocumentName: String { "relay.\(name).entry" }
    var exitDocumentName: String { "relay.\(name).exit" }

    /// Values go in as JSON strings (valid YAML), so nothing an operator typed can change the structure.
    private static func quoted(_ text: String) -> String { YAMLText.quoted(text) }

    var entryDocument: String {
        """
        # Rendered by the coordinator from relay "\(name)"; edit the relay, not this file.
        pipelines:
          \(pipelineID):
            stages:
              - type: listen.tcp
                address: \(Self.quoted(listen))
              - type: transform.aead
                side: client
                cipher: \(Self.quoted(cipher))
                password: \(Self.quoted(key))
                target: \(Self.quoted(target))
              - type: connect.tcp
                addresses: [\(Self.quoted(exit.address))]

        """
    }

    var exitDocument: String {
        """
        # Rendered by the coordinator from relay "\(name)"; edit the relay, not this file.
        pipelines:
          \(pipelineID):
            stages:
              - type: listen.tcp
                address: \(Self.quoted(exit.listen))
              - type: transform.aead
                side: server
                cipher: \(Self.quoted(cipher))
                password: \(Self.quoted(key))
              - type: connect.tcp
                addresses: [\(Self.quoted(target))]

        """
    }

    /// Who enters where and reaches what, for people (the audit trail, the console): no key.
    var summary: String {
        let entries = entry.agent.map { "agent \($0)" } ?? "agents with \(entry.selector?.description ?? "")"
        return "\(entries) on \(listen) → \(cipher) → exit agent \(exit.agent) at \(exit.address) (listening on \(exit.listen)) → \(target)"
    }

    /// The two documents and who gets them.
    func rendered(at time: Double) -> (documents: [PipelineDocument], assignments: [Assignment]) {
        (
            [PipelineDocument(name: entryDocumentName, document: entryDocument, updatedAt: time),
             PipelineDocument(name: exitDocumentName, document: exitDocument, updatedAt: time)],
            [Assignment(id: "relay:\(name):entry", pipeline: entryDocumentName, agent: entry.agent, selector: entry.selector, createdAt: time),
             Assignment(id: "relay:\(name):exit", pipeline: exitDocumentName, agent: exit.agent, selector: nil, createdAt: time)]
        )
    }

    /// What the API shows: everything but the key.
    struct View: Encodable {
        let relay: Relay

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(relay.name, forKey: .name)
            try container.encode(relay.entry, forKey: .entry)
            try container.encode(relay.exit, forKey: .exit)
            try container.encode(relay.listen, forKey: .listen)
            try container.encode(relay.target, forKey: .target)
            try container.encode(relay.cipher, forKey: .cipher)
            try container.encode(relay.createdAt, forKey: .createdAt)
        }
    }
}
