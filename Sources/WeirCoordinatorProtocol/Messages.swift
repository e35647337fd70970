import Foundation

/// The WebSocket path agents dial, under the coordinator's address.
public let agentConnectPath = "/api/v1/agent/connect"

/// HTTP headers of the agent's upgrade request. An enrolled agent sends its credential as a bearer token;
/// an agent that has none yet sends its enrollment token instead and receives a credential in `welcome`.
public enum AgentHeaders {
    public static let agentID = "X-Weir-Agent-Id"
    public static let enrollmentToken = "X-Weir-Enrollment-Token"
}

/// What an agent tells the coordinator once connected.
public struct AgentHello: Codable, Sendable, Equatable {
    public var agentID: String
    public var version: String
    public var labels: [String: String]
    public var facts: [String: String]
    /// The bundle the agent runs now (kept across restarts), nil when it never applied one.
    public var appliedVersion: String?

    public init(agentID: String, version: String, labels: [String: String], facts: [String: String], appliedVersion: String?) {
        self.agentID = agentID
        self.version = version
        self.labels = labels
        self.facts = facts
        self.appliedVersion = appliedVersion
    }

    enum CodingKeys: String, CodingKey {
        case agentID = "agent_id", version, labels, facts, appliedVersion = "applied_version"
    }
}

/// One pipeline's numbers and health, as of the heartbeat.
public struct PipelineReport: Codable, Sendable, Equatable {
    public var bytesIn: Double
    public var bytesOut: Double
    public var connectionsTotal: Double
    public var connectionsActive: Double
    public var errorsTotal: Double
    /// "running" while the agent runs the pipeline.
    public var health: String
    /// WireGuard peers of the pipeline by name (VPN users' devices); absent without a wireguard stage, and
    /// from agents older than this field.
    public var peers: [String: PeerReport]?

    public init(
        bytesIn: Double = 0, bytesOut: Double = 0, connectionsTotal: Double = 0, connectionsActive: Double = 0, errorsTotal: Double = 0,
        health: String = "running", peers: [String: PeerReport]? = nil
    ) {
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
        self.connectionsTotal = connectionsTotal
        self.connectionsActive = connectionsActive
        self.errorsTotal = errorsTotal
        self.health = health
        self.peers = peers
    }

    enum CodingKeys: String, CodingKey {
        case bytesIn = "bytes_in", bytesOut = "bytes_out", connectionsTotal = "connections_total"
        case connectionsActive = "connections_active", errorsTotal = "errors_total", health, peers
    }
}

/// One WireGuard peer's traffic as the agent's metrics have it.
public struct PeerReport: Codable, Sendable, Equatable {
    public var receiveBytes: Double = 0
    public var transmitBytes: Double = 0
    /// Unix seconds; 0: never.
    public var lastHandshake: Double = 0
    /// Transfer in the current quota period, and the quota (nil: none).
    public var periodBytes: Double = 0
    public var quotaBytes: Double?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case receiveBytes = "receive_bytes", transmitBytes = "transmit_bytes", lastHandshake = "last_handshake", periodBytes = "period_bytes"
        case quotaBytes = "quota_bytes"
    }
}

public struct AgentHeartbeat: Codable, Sendable, Equatable {
    public var appliedVersion: String?
    public var pipelines: [String: PipelineReport]

    public init(appliedVersion: String?, pipelines: [String: PipelineReport]) {
        self.appliedVersion = appliedVersion
        self.pipelines = pipelines
    }

    enum CodingKeys: String, CodingKey { case appliedVersion = "applied_version", pipelines }
}

/// Sent by the coordinator first, after a successful upgrade.
public struct AgentWelcome: Codable, Sendable, Equatable {
    /// How often the agent sends a heartbeat.
    public var heartbeatIntervalSeconds: Double
    /// Present only when the agent enrolled on this connection: it must keep it and use it from now on.
    public var credential: String?

    public init(heartbeatIntervalSeconds: Double, credential: String?) {
        self.heartbeatIntervalSeconds = heartbeatIntervalSeconds
        self.credential = credential
    }

    enum CodingKeys: String, CodingKey { case heartbeatIntervalSeconds = "heartbeat_interval_seconds", credential }
}

/// Agent to coordinator.
public enum AgentMessage: Sendable, Equatable {
    case hello(AgentHello)
    case heartbeat(AgentHeartbeat)
    /// The bundle of this version is applied and running.
    case ack(version: String)
    /// The bundle of this version was refused; the agent keeps running what it ran before.
    case nack(version: String, errors: [String])
}

/// Coordinator to agent.
public enum CoordinatorMessage: Sendable, Equatable {
    case welcome(AgentWelcome)
    case bundle(ConfigBundle)
}

// MARK: - Wire form: one JSON object per WebSocket text message, its kind in "type".

private enum MessageKind: String, Codable {
    case hello, heartbeat, ack, nack, welcome, bundle
}

private struct Versioned: Codable {
    var version: String
    var errors: [String]?
}

private enum TypeKey: String, CodingKey { case type }

extension AgentMessage: Codable {
    public init(from decoder: any Decoder) throws {
        let kind = try decoder.container(keyedBy: TypeKey.self).decode(MessageKind.self, forKey: .type)
        switch kind {
        case .hello: self = .hello(try AgentHello(from: decoder))
        case .heartbeat: self = .heartbeat(try AgentHeartbeat(from: decoder))
        case .ack: self = .ack(version: try Versioned(from: decoder).version)
        case .nack:
            let body = try Versioned(from: decoder)
            self = .nack(version: body.version, errors: body.errors ?? [])
        case .welcome, .bundle:
            throw DecodingError.dataCorrupted(.init(codingPath: [TypeKey.type], debugDescription: "\(kind) is not an agent message"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: TypeKey.self)
        switch self {
        case .hello(let hello):
            try container.encode(MessageKind.hello, forKey: .type)
            try hello.encode(to: encoder)
        case .heartbeat(let heartbeat):
            try container.encode(MessageKind.heartbeat, forKey: .type)
            try heartbeat.encode(to: encoder)
        case .ack(let version):
            try container.encode(MessageKind.ack, forKey: .type)
            try Versioned(version: version).encode(to: encoder)
        case .nack(let version, let errors):
            try container.encode(MessageKind.nack, forKey: .type)
            try Versioned(version: version, errors: errors).encode(to: encoder)
        }
    }
}

extension CoordinatorMessage: Codable {
    public init(from decoder: any Decoder) throws {
        let kind = try decoder.container(keyedBy: TypeKey.self).decode(MessageKind.self, forKey: .type)
        switch kind {
        case .welcome: self = .welcome(try AgentWelcome(from: decoder))
        case .bundle: self = .bundle(try ConfigBundle(from: decoder))
        default:
            throw DecodingError.dataCorrupted(.init(codingPath: [TypeKey.type], debugDescription: "\(kind) is not a coordinator message"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: TypeKey.self)
        switch self {
        case .welcome(let welcome):
            try container.encode(MessageKind.welcome, forKey: .type)
            try welcome.encode(to: encoder)
        case .bundle(let bundle):
            try container.encode(MessageKind.bundle, forKey: .type)
            try bundle.encode(to: encoder)
        }
    }
}

/// JSON in both directions, with sorted keys so equal messages are equal text.
public enum WireCoding {
    public static func encode(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }
}
