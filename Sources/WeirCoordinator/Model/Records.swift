import Foundation
import WeirCore
import WeirCoordinatorProtocol

/// Who may do what through the API.
public enum APIRole: String, Codable, Sendable, CaseIterable {
    /// Reads and writes everything.
    case admin
    /// Reads everything and changes the fleet's configuration (documents, lists, assignments, relays,
    /// agents); does not manage API or enrollment tokens.
    case `operator`
    /// Reads everything except secrets (secret option values in documents are `<redacted>`) and what clients
    /// did (agents' DNS query logs: who asked for which name).
    case viewer

    var readsSecrets: Bool { self != .viewer }

    /// The role of the API token behind the request being served.
    @TaskLocal static var current: APIRole?
}

struct APITokenRecord: Codable, Sendable {
    var id: String
    var name: String
    var role: APIRole
    var createdAt: Double

    enum CodingKeys: String, CodingKey { case id, name, role, createdAt = "created_at" }
}

struct EnrollmentTokenRecord: Codable, Sendable {
    var id: String
    var labels: [String: String]
    var expiresAt: Double?
    /// nil: unlimited.
    var usesLeft: Int?
    var createdAt: Double

    enum CodingKeys: String, CodingKey { case id, labels, expiresAt = "expires_at", usesLeft = "uses_left", createdAt = "created_at" }

    /// Not expired and not used up.
    func isUsable(at time: Double) -> Bool {
        (expiresAt.map { $0 > time } ?? true) && (usesLeft.map { $0 > 0 } ?? true)
    }
}

/// One agent as the registry knows it.
struct AgentRecord: Sendable {
    var id: String
    var revoked: Bool
    /// From the enrollment token, from the agent's own configuration, and set by operators; later ones win.
    var enrollmentLabels: [String: String]
    var announcedLabels: [String: String]
    var operatorLabels: [String: String]
    var version: String
    var facts: [String: String]
    var enrolledAt: Double
    var lastSeen: Double
    var desiredVersion: String?
    var appliedVersion: String?
    var nackedVersion: String?
    var lastError: String?
    var report: [String: PipelineReport]
    /// Where Prometheus scrapes the agent's metrics, from its last hello.
    var metricsAddress: String? = nil

    var labels: [String: String] {
        enrollmentLabels.merging(announcedLabels) { $1 }.merging(operatorLabels) { $1 }
    }
}

/// A pipeline document: a drop-in file's content, by name.
struct PipelineDocument: Codable, Sendable {
    var name: String
    var document: String
    var updatedAt: Double

    enum CodingKeys: String, CodingKey { case name, document, updatedAt = "updated_at" }
}

/// A pipeline document given to one agent, or to every agent whose labels match a selector.
struct Assignment: Codable, Sendable, Equatable {
    var id: String
    var pipeline: String
    var agent: String?
    var selector: LabelSelector?
    var createdAt: Double

    enum CodingKeys: String, CodingKey { case id, pipeline, agent, selector, createdAt = "created_at" }

    func applies(to agent: AgentRecord) -> Bool {
        if let id = self.agent { return id == agent.id }
        return selector?.matches(agent.labels) ?? false
    }
}

/// `key=value,key=value`: every pair must match. An empty selector matches every agent.
struct LabelSelector: Codable, Sendable, Equatable, CustomStringConvertible {
    var requirements: [(key: String, value: String)]

    static func == (a: LabelSelector, b: LabelSelector) -> Bool { a.description == b.description }

    init(parsing text: String) throws {
        requirements = []
        for part in text.split(separator: ",", omittingEmptySubsequences: true) {
            let pair = part.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            guard pair.count == 2, ConfigLoader.isValidLabel(pair[0]), ConfigLoader.isValidLabel(pair[1]) else {
                throw APIError.badRequest("selector \"\(text)\": expected key=value[,key=value…] with letters, digits, '-', '_', '.' or '/'")
            }
            requirements.append((pair[0], pair[1]))
        }
        requirements.sort { $0.key < $1.key }
    }

    func matches(_ labels: [String: String]) -> Bool { requirements.allSatisfy { labels[$0.key] == $0.value } }

    var description: String { requirements.map { "\($0.key)=\($0.value)" }.joined(separator: ",") }

    init(from decoder: any Decoder) throws { try self.init(parsing: try decoder.singleValueContainer().decode(String.self)) }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

enum Identifiers {
    /// Agent ids are host names or similar: letters, digits, '.', '-', '_'.
    static func isValidAgentID(_ id: String) -> Bool {
        (1...128).contains(id.count) && id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
            && !id.hasPrefix(".")
    }
}
