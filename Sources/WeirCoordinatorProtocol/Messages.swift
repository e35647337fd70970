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
    /// The agent's `metrics.listen` ("0.0.0.0:9464"), for the coordinator's Prometheus service discovery;
    /// nil when the endpoint is off (and from agents older than this field).
    public var metricsAddress: String?

    public init(
        agentID: String, version: String, labels: [String: String], facts: [String: String], appliedVersion: String?, metricsAddress: String? = nil
    ) {
        self.agentID = agentID
        self.version = version
        self.labels = labels
        self.facts = facts
        self.appliedVersion = appliedVersion
        self.metricsAddress = metricsAddress
    }

    enum CodingKeys: String, CodingKey {
        case agentID = "agent_id", version, labels, facts, appliedVersion = "applied_version", metricsAddress = "metrics_address"
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
    /// Per client address (count.ebpf's per-IP counters): pipeline → address → bytes since the growth the
    /// coordinator last got, the busiest addresses only. Absent without count.ebpf, and from older agents.
    public var addresses: [String: [String: AddressGrowth]]?

    public init(appliedVersion: String?, pipelines: [String: PipelineReport], addresses: [String: [String: AddressGrowth]]? = nil) {
        self.appliedVersion = appliedVersion
        self.pipelines = pipelines
        self.addresses = addresses
    }

    enum CodingKeys: String, CodingKey { case appliedVersion = "applied_version", pipelines, addresses }
}

/// Bytes one client address sent to this host (in) and received from it (out) over an interval.
public struct AddressGrowth: Codable, Sendable, Equatable {
    public var bytesIn: Double
    public var bytesOut: Double

    public init(bytesIn: Double, bytesOut: Double) {
        self.bytesIn = bytesIn
        self.bytesOut = bytesOut
    }

    enum CodingKeys: String, CodingKey { case bytesIn = "bytes_in", bytesOut = "bytes_out" }
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

/// The coordinator asks for an agent's recent DNS answers (the `query_log.ring` of its dns.filter stages).
public struct DNSQueriesRequest: Codable, Sendable, Equatable {
    /// Pairs the answer with the question.
    public var id: String
    /// One pipeline's; nil: every dns.filter's, merged newest first.
    public var pipeline: String?
    /// Part of the name or the client's address.
    public var search: String?
    /// allowed, blocked, cached, servfail or refused.
    public var result: String?
    public var limit: Int

    public init(id: String, pipeline: String? = nil, search: String? = nil, result: String? = nil, limit: Int = 100) {
        self.id = id
        self.pipeline = pipeline
        self.search = search
        self.result = result
        self.limit = limit
    }
}

/// One answered query. The same keys as a line of the agent's `query_log.file`, plus the pipeline.
public struct DNSQueryEntry: Codable, Sendable, Equatable {
    /// ISO 8601, UTC, milliseconds.
    public var time: String
    public var pipeline: String
    public var client: String
    public var name: String
    /// A, AAAA, HTTPS… (TYPEn for others).
    public var type: String
    public var result: String
    /// What decided: `list:line` of the rule, canary, records, serve_stale, max_inflight.
    public var rule: String?
    public var upstream: String?
    public var ms: Double

    public init(time: String, pipeline: String, client: String, name: String, type: String, result: String, rule: String?, upstream: String?, ms: Double) {
        self.time = time
        self.pipeline = pipeline
        self.client = client
        self.name = name
        self.type = type
        self.result = result
        self.rule = rule
        self.upstream = upstream
        self.ms = ms
    }
}

public struct DNSQueriesResponse: Codable, Sendable, Equatable {
    public var id: String
    /// Newest first.
    public var entries: [DNSQueryEntry]
    /// The pipelines that keep a ring (to tell "no such pipeline" from "nothing asked yet").
    public var pipelines: [String]
    /// Why there are no entries to give (an unknown pipeline).
    public var error: String?

    public init(id: String, entries: [DNSQueryEntry], pipelines: [String], error: String? = nil) {
        self.id = id
        self.entries = entries
        self.pipelines = pipelines
        self.error = error
    }
}

/// Agent to coordinator.
public enum AgentMessage: Sendable, Equatable {
    case hello(AgentHello)
    case heartbeat(AgentHeartbeat)
    /// The bundle of this version is applied and running.
    case ack(version: String)
    /// The bundle of this version was refused; the agent keeps running what it ran before.
    case nack(version: String, errors: [String])
    /// The answer to `CoordinatorMessage.dnsQueries`.
    case dnsQueries(DNSQueriesResponse)
}

/// Coordinator to agent.
public enum CoordinatorMessage: Sendable, Equatable {
    case welcome(AgentWelcome)
    case bundle(ConfigBundle)
    /// Agents before this message ignore it (the coordinator's request times out).
    case dnsQueries(DNSQueriesRequest)
}

// MARK: - Wire form: one JSON object per WebSocket text message, its kind in "type".

private enum MessageKind: String, Codable {
    case hello, heartbeat, ack, nack, welcome, bundle
    case dnsQueries = "dns_queries"
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
        case .dnsQueries: self = .dnsQueries(try DNSQueriesResponse(from: decoder))
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
        case .dnsQueries(let response):
            try container.encode(MessageKind.dnsQueries, forKey: .type)
            try response.encode(to: encoder)
        }
    }
}

extension CoordinatorMessage: Codable {
    public init(from decoder: any Decoder) throws {
        let kind = try decoder.container(keyedBy: TypeKey.self).decode(MessageKind.self, forKey: .type)
        switch kind {
        case .welcome: self = .welcome(try AgentWelcome(from: decoder))
        case .bundle: self = .bundle(try ConfigBundle(from: decoder))
        case .dnsQueries: self = .dnsQueries(try DNSQueriesRequest(from: decoder))
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
        case .dnsQueries(let request):
            try container.encode(MessageKind.dnsQueries, forKey: .type)
            try request.encode(to: encoder)
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
