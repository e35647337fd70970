import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import WeirCore
import WeirCoordinatorProtocol

/// The REST API under /api/v1. Every write that changes what agents should run ends with `changed()`, which
/// reaches every instance's connected agents.
struct CoordinatorAPI: Sendable {
    let store: CoordinatorStore
    let registry: StageRegistry
    let offlineAfter: Duration
    let changed: @Sendable () async -> Void
    let agentSessions: AgentSessions
    /// `coordinator.max_request_body`.
    let maxRequestBody: Int

    func register(on router: Router<CoordinatorContext>) {
        let api = router.group("api/v1")
        api.get("openapi.json") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: OpenAPIDocument.json)))
        }
        // An upgrade the WebSocket side refused lands here: say why.
        api.get("agent/connect") { request, _ -> Response in
            _ = try await agentSessions.identify(request.headers)
            throw APIError(status: .upgradeRequired, message: "this endpoint takes WebSocket connections from agents")
        }

        api.get("agents") { _, _ in JSONResponse.make(try await agentViews()) }
        api.get("agents/{id}") { _, context in
            let id = try context.parameters.require("id")
            return JSONResponse.make(try await agentView(id))
        }
        api.get("agents/{id}/traffic") { _, context in
            let id = try context.parameters.require("id")
            guard let agent = try await store.agent(id: id) else { throw APIError.notFound("agent \"\(id)\"") }
            return JSONResponse.make(agent.report)
        }
        api.delete("agents/{id}") { _, context in
            let id = try context.parameters.require("id")
            guard try await store.deleteAgent(id: id) else { throw APIError.notFound("agent \"\(id)\"") }
            await changed()
            return Response(status: .noContent)
        }
        api.post("agents/{id}/revoke") { _, context in
            let id = try context.parameters.require("id")
            try await revokeAgent(id)
            return JSONResponse.make(["revoked": id])
        }
        api.put("agents/{id}/labels") { request, context in
            let id = try context.parameters.require("id")
            try await setLabels(agentID: id, try await decode([String: String].self, request, context))
            return JSONResponse.make(try await agentView(id))
        }
        api.get("labels") { _, _ in
            var counts: [String: [String: Int]] = [:]
            for agent in try await store.agents() {
                for (key, value) in agent.labels { counts[key, default: [:]][value, default: 0] += 1 }
            }
            return JSONResponse.make(counts)
        }

        api.get("enrollment-tokens") { _, _ in JSONResponse.make(try await store.enrollmentTokens()) }
        api.post("enrollment-tokens") { request, context in
            let body = try await decode(EnrollmentTokenRequest.self, request, context)
            try Self.checkLabels(body.labels ?? [:])
            if let uses = body.uses, uses < 1 { throw APIError.badRequest("uses must be at least 1") }
            var expiresAt: Double?
            if let ttl = body.ttl {
                do { expiresAt = Date().timeIntervalSince1970 + (try DurationParser.parse(ttl)).seconds } catch {
                    throw APIError.badRequest("ttl: \(error)")
                }
            }
            let (record, secret) = try await store.createEnrollmentToken(labels: body.labels ?? [:], expiresAt: expiresAt, uses: body.uses)
            return JSONResponse.make(CreatedSecret(record: record, token: secret), status: .created)
        }
        api.delete("enrollment-tokens/{id}") { _, context in
            let id = try context.parameters.require("id")
            guard try await store.deleteEnrollmentToken(id: id) else { throw APIError.notFound("enrollment token \"\(id)\"") }
            return Response(status: .noContent)
        }

        api.get("tokens") { _, _ in JSONResponse.make(try await store.apiTokens()) }
        api.post("tokens") { request, context in
            let body = try await decode(APITokenRequest.self, request, context)
            guard !body.name.isEmpty, body.name.count <= 128 else { throw APIError.badRequest("name must be 1-128 characters") }
            let (record, secret) = try await store.createAPIToken(name: body.name, role: body.role)
            return JSONResponse.make(CreatedSecret(record: record, token: secret), status: .created)
        }
        api.delete("tokens/{id}") { _, context in
            let id = try context.parameters.require("id")
            guard try await store.deleteAPIToken(id: id) else { throw APIError.notFound("token \"\(id)\"") }
            return Response(status: .noContent)
        }

        api.get("pipelines") { _, _ in JSONResponse.make(try await store.pipelines().map(shown)) }
        api.get("pipelines/{name}") { _, context in
            let name = try context.parameters.require("name")
            guard let document = try await store.pipeline(name: name) else { throw APIError.notFound("pipeline document \"\(name)\"") }
            return JSONResponse.make(shown(document))
        }
        api.put("pipelines/{name}") { request, context in
            let name = try context.parameters.require("name")
            guard ConfigLoader.isValidName(name) else {
                throw APIError.badRequest("a pipeline document name is 1-64 letters, digits, '-' or '_'")
            }
            let document = try await documentBody(request, context)
            let existed = try await putPipeline(name: name, document: document) == false
            guard let stored = try await store.pipeline(name: name) else { throw APIError.notFound("pipeline document \"\(name)\"") }
            return JSONResponse.make(stored, status: existed ? .ok : .created)
        }
        api.delete("pipelines/{name}") { _, context in
            try await deletePipeline(name: try context.parameters.require("name"))
            return Response(status: .noContent)
        }

        api.get("lists") { _, _ in JSONResponse.make(try await store.lists()) }
        api.get("lists/{name}") { _, context in
            let name = try context.parameters.require("name")
            guard let list = try await store.list(name: name) else { throw APIError.notFound("list \"\(name)\"") }
            return JSONResponse.make(list)
        }
        api.put("lists/{name}") { request, context in
            let name = try context.parameters.require("name")
            guard ConfigLoader.isValidName(name) else { throw APIError.badRequest("a list name is 1-64 letters, digits, '-' or '_'") }
            let body = try await decode(ListRequest.self, request, context)
            let created = try await putList(name: name, kind: body.kind, entries: body.entries)
            return JSONResponse.make(try await store.list(name: name), status: created ? .created : .ok)
        }
        api.post("lists/{name}/entries") { request, context in
            let name = try context.parameters.require("name")
            let body = try await decode(ListChange.self, request, context)
            return JSONResponse.make(try await changeList(name: name, add: body.add ?? [], remove: (body.remove ?? []).map(\.key)))
        }
        api.delete("lists/{name}") { _, context in
            let name = try context.parameters.require("name")
            try await deleteList(name: name)
            return Response(status: .noContent)
        }

        api.get("relays") { _, _ in JSONResponse.make(try await store.relays().map(Relay.View.init)) }
        api.get("relays/{name}") { _, context in
            let name = try context.parameters.require("name")
            guard let relay = try await store.relays().first(where: { $0.name == name }) else { throw APIError.notFound("relay \"\(name)\"") }
            return JSONResponse.make(Relay.View(relay: relay))
        }
        api.post("relays") { request, context in
            let relay = try await createRelay(try await decode(RelayRequest.self, request, context))
            return JSONResponse.make(Relay.View(relay: relay), status: .created)
        }
        api.delete("relays/{name}") { _, context in
            try await deleteRelay(name: try context.parameters.require("name"))
            return Response(status: .noContent)
        }

        api.get("assignments") { _, _ in JSONResponse.make(try await store.assignments()) }
        api.post("assignments") { request, context in
            let body = try await decode(AssignmentRequest.self, request, context)
            return JSONResponse.make(try await createAssignment(pipeline: body.pipeline, agent: body.agent, selector: body.selector), status: .created)
        }
        api.delete("assignments/{id}") { _, context in
            try await deleteAssignment(id: try context.parameters.require("id"))
            return Response(status: .noContent)
        }

        registerVPN(on: api)
        registerDNSQueries(on: api)
    }

    // MARK: - Views

    func agentViews() async throws -> [AgentView] {
        let state = try await store.desiredState()
        return try await store.agents().map { view($0, state) }
    }

    /// One agent, without reading every other.
    func agentView(_ id: String) async throws -> AgentView {
        guard let agent = try await store.agent(id: id) else { throw APIError.notFound("agent \"\(id)\"") }
        return view(agent, try await store.desiredState())
    }

    private func view(_ agent: AgentRecord, _ state: DesiredState) -> AgentView {
        AgentView(agent, desired: state.bundle(for: agent).version, online: !agent.revoked && Date().timeIntervalSince1970 - agent.lastSeen < offlineAfter.seconds)
    }

    /// The agent's own validator (shared code), so the API refuses what an agent would, with the same
    /// messages; the document may use the named lists, as it will on agents.
    func validate(document: String, name: String, lists: [NamedList]) throws {
        let listFiles = lists.isEmpty ? [] : [(name: "lists/\(NamedListFile.fileName)", yaml: NamedListFile.render(lists))]
        do {
            _ = try ConfigLoader(registry: registry).loadPipelines(yaml: document, name: "pipelines/\(name).yaml", listFiles: listFiles)
        } catch {
            throw APIError.unprocessable("invalid pipeline document", details: error.diagnostics.map(\.description))
        }
    }

    /// 409 when a document would not validate with `lists` (a list removed, or of another kind).
    func checkDocuments(against lists: [NamedList], conflict: String) async throws {
        for document in try await store.pipelines() {
            do {
                try validate(document: document.document, name: document.name, lists: lists)
            } catch let error as APIError {
                throw APIError(status: .conflict, message: "\(conflict) pipeline document \"\(document.name)\"", details: error.details)
            }
        }
    }

    /// A list is checked by the rules of a stage that uses its kind (enforce.nftables allow_destinations for
    /// destinations, dns.filter for rules and records), the same code that checks it on agents; errors point
    /// at the entry's line of the rendered list.
    func validate(list: NamedList) throws {
        let stage: String
        switch list.kind {
        case .destinations: stage = "type: enforce.nftables\n        allow_destinations: { interfaces: [lo], lists: [\(list.name)] }"
        case .dnsRules: stage = "type: dns.filter\n        upstreams: [127.0.0.1]\n        blocklists: [{list: \(list.name)}]"
        case .dnsRecords: stage = "type: dns.filter\n        upstreams: [127.0.0.1]\n        records_lists: [\(list.name)]"
        }
        let user = """
            pipelines:
              list-check:
                stages:
                  - \(stage)
            """
        do {
            _ = try ConfigLoader(registry: registry).loadPipelines(
                yaml: user, name: "list-check.yaml", listFiles: [(name: "lists/\(list.name).yaml", yaml: NamedListFile.render([list]))])
        } catch {
            throw APIError.unprocessable("invalid list", details: error.diagnostics.map(\.description))
        }
    }

    /// A document as the caller may see it: secret option values redacted below operator.
    private func shown(_ document: PipelineDocument) -> PipelineDocument {
        guard APIRole.current?.readsSecrets != true else { return document }
        var redacted = document
        redacted.document = SecretRedaction(registry: registry).redact(document.document)
        return redacted
    }

    /// The whole body, or 413 when it is larger than `max_request_body` (said by Content-Length or found while reading).
    func body(_ request: Request) async throws -> ByteBuffer {
        let tooLarge = APIError(
            status: .contentTooLarge, message: "the request body is larger than \(maxRequestBody) bytes (coordinator.max_request_body)")
        if let length = request.headers[.contentLength].flatMap(Int.init), length > maxRequestBody { throw tooLarge }
        do {
            return try await request.body.collect(upTo: maxRequestBody)
        } catch is NIOTooManyBytesError {
            throw tooLarge
        }
    }

    private func documentBody(_ request: Request, _ context: CoordinatorContext) async throws -> String {
        let buffer = try await body(request)
        let text = String(buffer: buffer)
        if request.headers[.contentType]?.hasPrefix("application/json") == true {
            struct Body: Decodable { let document: String }
            guard let body = try? JSONDecoder().decode(Body.self, from: Data(text.utf8)) else {
                throw APIError.badRequest("expected {\"document\": \"<YAML>\"} or the YAML itself (Content-Type: application/yaml)")
            }
            return body.document
        }
        return text
    }

    func decode<T: Decodable>(_ type: T.Type, _ request: Request, _ context: CoordinatorContext) async throws -> T {
        let buffer = try await body(request)
        do {
            return try JSONDecoder().decode(type, from: Data(buffer: buffer))
        } catch let error as APIError {
            throw error
        } catch {
            throw APIError.badRequest("request body: \(Self.describe(error))")
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing key \"\(key.stringValue)\""
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context), DecodingError.dataCorrupted(let context):
            let path = context.codingPath.map(\.stringValue).joined(separator: ".")
            return (path.isEmpty ? "" : "\(path): ") + context.debugDescription
        default: return "\(error)"
        }
    }

    static func checkLabels(_ labels: [String: String]) throws {
        for (key, value) in labels where !ConfigLoader.isValidLabel(key) || !ConfigLoader.isValidLabel(value) {
            throw APIError.badRequest("label \(key)=\(value): keys and values are 1-63 letters, digits, '-', '_', '.' or '/'")
        }
    }
}

struct AgentView: Encodable {
    let id: String
    let labels: [String: String]
    let version: String
    let facts: [String: String]
    let online: Bool
    let revoked: Bool
    let lastSeen: Double
    let enrolledAt: Double
    /// What it should run now; applied is what it runs.
    let desiredVersion: String
    let appliedVersion: String?
    let nackedVersion: String?
    let lastError: String?
    /// in_sync, pending (not applied yet) or refused (the desired version was NACKed).
    let status: String
    let pipelines: [String: PipelineReport]
    /// Where Prometheus scrapes it (from its hello), nil when unknown.
    let metricsAddress: String?

    init(_ agent: AgentRecord, desired: String, online: Bool) {
        id = agent.id
        labels = agent.labels
        version = agent.version
        facts = agent.facts
        self.online = online
        revoked = agent.revoked
        lastSeen = agent.lastSeen
        enrolledAt = agent.enrolledAt
        desiredVersion = desired
        appliedVersion = agent.appliedVersion
        nackedVersion = agent.nackedVersion
        lastError = agent.lastError
        status = agent.appliedVersion == desired ? "in_sync" : agent.nackedVersion == desired ? "refused" : "pending"
        pipelines = agent.report
        metricsAddress = agent.metricsAddress
    }

    enum CodingKeys: String, CodingKey {
        case id, labels, version, facts, online, revoked, lastSeen = "last_seen", enrolledAt = "enrolled_at"
        case desiredVersion = "desired_version", appliedVersion = "applied_version", nackedVersion = "nacked_version"
        case metricsAddress = "metrics_address"
        case lastError = "last_error", status, pipelines
    }

    /// Absent values are written as null, so every agent has the same fields.
    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(id, forKey: .id)
        try container.encode(labels, forKey: .labels)
        try container.encode(version, forKey: .version)
        try container.encode(facts, forKey: .facts)
        try container.encode(online, forKey: .online)
        try container.encode(revoked, forKey: .revoked)
        try container.encode(lastSeen, forKey: .lastSeen)
        try container.encode(enrolledAt, forKey: .enrolledAt)
        try container.encode(desiredVersion, forKey: .desiredVersion)
        try container.encode(appliedVersion, forKey: .appliedVersion)
        try container.encode(nackedVersion, forKey: .nackedVersion)
        try container.encode(lastError, forKey: .lastError)
        try container.encode(status, forKey: .status)
        try container.encode(pipelines, forKey: .pipelines)
        try container.encode(metricsAddress, forKey: .metricsAddress)
    }
}

struct EnrollmentTokenRequest: Decodable {
    let labels: [String: String]?
    /// e.g. "24h"; none: the token does not expire.
    let ttl: String?
    /// none: any number of agents may enroll with it.
    let uses: Int?
}

struct APITokenRequest: Decodable {
    let name: String
    let role: APIRole
}

struct RelayRequest: Decodable {
    struct Entry: Decodable {
        let agent: String?
        let selector: String?
    }

    let name: String
    let entry: Entry
    let exit: Relay.Exit
    let listen: String
    let target: String
    let cipher: String?
}

struct ListRequest: Decodable {
    let entries: [ListEntry]
    /// Absent: the list's kind (destinations for a new list).
    let kind: NamedListKind?
}

struct ListChange: Decodable {
    let add: [ListEntry]?
    let remove: [ListEntry]?
}

struct AssignmentRequest: Decodable {
    let pipeline: String
    let agent: String?
    let selector: String?
}

/// A created token: its record and, this once, its secret.
struct CreatedSecret<Record: Encodable>: Encodable {
    let record: Record
    let token: String

    func encode(to encoder: any Encoder) throws {
        try record.encode(to: encoder)
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(token, forKey: .token)
    }

    enum Keys: String, CodingKey { case token }
}
