import Foundation
import SQLKit
import WeirCore
import WeirCoordinatorProtocol

/// Everything the coordinator remembers, in SQL both SQLite and PostgreSQL run.
struct CoordinatorStore: Sendable {
    let database: CoordinatorDatabase
    var sql: any SQLDatabase { database.sql }

    let secrets: SecretBox

    init(database: CoordinatorDatabase, secrets: SecretBox) {
        self.database = database
        self.secrets = secrets
    }

    private static func now() -> Double { Date().timeIntervalSince1970 }

    // MARK: - API tokens

    func apiTokenCount() async throws -> Int {
        try await sql.raw("SELECT COUNT(*) AS n FROM api_tokens").first()?.decode(column: "n", as: Int.self) ?? 0
    }

    /// Returns the record and the secret, which is shown this once.
    func createAPIToken(name: String, role: APIRole) async throws -> (APITokenRecord, String) {
        let secret = Secrets.make(prefix: "weir_api_")
        let record = APITokenRecord(id: Secrets.id(), name: name, role: role, createdAt: Self.now())
        try await sql.raw("""
            INSERT INTO api_tokens (id, name, role, secret_hash, created_at)
            VALUES (\(bind: record.id), \(bind: name), \(bind: role.rawValue), \(bind: Secrets.hash(secret)), \(bind: record.createdAt))
            """).run()
        return (record, secret)
    }

    func apiToken(secret: String) async throws -> APITokenRecord? {
        try await sql.raw("SELECT id, name, role, created_at FROM api_tokens WHERE secret_hash = \(bind: Secrets.hash(secret))")
            .first().map(Self.apiToken)
    }

    func apiTokens() async throws -> [APITokenRecord] {
        try await sql.raw("SELECT id, name, role, created_at FROM api_tokens ORDER BY created_at").all().map(Self.apiToken)
    }

    func deleteAPIToken(id: String) async throws -> Bool {
        try await deleting("DELETE FROM api_tokens WHERE id = \(bind: id)", exists: "SELECT id FROM api_tokens WHERE id = \(bind: id)")
    }

    private static func apiToken(_ row: any SQLRow) throws -> APITokenRecord {
        APITokenRecord(
            id: try row.decode(column: "id", as: String.self), name: try row.decode(column: "name", as: String.self),
            role: APIRole(rawValue: try row.decode(column: "role", as: String.self)) ?? .viewer,
            createdAt: try row.decode(column: "created_at", as: Double.self))
    }

    // MARK: - Enrollment tokens

    func createEnrollmentToken(labels: [String: String], expiresAt: Double?, uses: Int?) async throws -> (EnrollmentTokenRecord, String) {
        let secret = Secrets.make(prefix: "weir_enroll_")
        let record = EnrollmentTokenRecord(id: Secrets.id(), labels: labels, expiresAt: expiresAt, usesLeft: uses, createdAt: Self.now())
        try await sql.raw("""
            INSERT INTO enrollment_tokens (id, secret_hash, labels, expires_at, uses_left, created_at)
            VALUES (\(bind: record.id), \(bind: Secrets.hash(secret)), \(bind: try JSONText.encode(labels)), \(bind: expiresAt),
                    \(bind: uses), \(bind: record.createdAt))
            """).run()
        return (record, secret)
    }

    func enrollmentTokens() async throws -> [EnrollmentTokenRecord] {
        try await sql.raw("SELECT id, labels, expires_at, uses_left, created_at FROM enrollment_tokens ORDER BY created_at").all()
            .map(Self.enrollmentToken)
    }

    func enrollmentToken(secret: String) async throws -> EnrollmentTokenRecord? {
        try await sql.raw("""
            SELECT id, labels, expires_at, uses_left, created_at FROM enrollment_tokens WHERE secret_hash = \(bind: Secrets.hash(secret))
            """).first().map(Self.enrollmentToken)
    }

    func deleteEnrollmentToken(id: String) async throws -> Bool {
        try await deleting("DELETE FROM enrollment_tokens WHERE id = \(bind: id)", exists: "SELECT id FROM enrollment_tokens WHERE id = \(bind: id)")
    }

    private static func enrollmentToken(_ row: any SQLRow) throws -> EnrollmentTokenRecord {
        EnrollmentTokenRecord(
            id: try row.decode(column: "id", as: String.self),
            labels: try JSONText.decode([String: String].self, try row.decode(column: "labels", as: String.self)),
            expiresAt: try row.decode(column: "expires_at", as: Double?.self), usesLeft: try row.decode(column: "uses_left", as: Int?.self),
            createdAt: try row.decode(column: "created_at", as: Double.self))
    }

    // MARK: - Agents

    enum EnrollmentResult {
        case enrolled(AgentRecord)
        case tokenInvalid
        case agentExists
    }

    /// Uses the token once and registers the agent with a credential hash. An id that is already enrolled
    /// (and not revoked) is refused: a token must not let anyone take over another agent's identity.
    func enroll(agentID: String, tokenSecret: String, credentialHash: String) async throws -> EnrollmentResult {
        let now = Self.now()
        guard let token = try await enrollmentToken(secret: tokenSecret), token.isUsable(at: now) else { return .tokenInvalid }
        if let existing = try await agent(id: agentID), !existing.revoked { return .agentExists }
        if token.usesLeft != nil {
            // Conditional, so two agents racing for the last use cannot both win.
            let used = try await sql.raw("""
                UPDATE enrollment_tokens SET uses_left = uses_left - 1 WHERE id = \(bind: token.id) AND uses_left > 0 RETURNING id
                """).all()
            guard !used.isEmpty else { return .tokenInvalid }
        }
        try await sql.raw("DELETE FROM agents WHERE id = \(bind: agentID) AND revoked = 1").run()
        let labels = try JSONText.encode(token.labels)
        try await sql.raw("""
            INSERT INTO agents (id, credential_hash, revoked, enrollment_labels, enrolled_at, last_seen)
            VALUES (\(bind: agentID), \(bind: credentialHash), 0, \(bind: labels), \(bind: now), \(bind: now))
            """).run()
        guard let record = try await agent(id: agentID) else { return .tokenInvalid }
        return .enrolled(record)
    }

    private static let agentColumns = """
        id, revoked, enrollment_labels, announced_labels, operator_labels, version, facts, enrolled_at, last_seen,
        desired_version, applied_version, nacked_version, last_error, report, metrics_address
        """

    func agent(id: String) async throws -> AgentRecord? {
        try await sql.raw("SELECT \(unsafeRaw: Self.agentColumns) FROM agents WHERE id = \(bind: id)").first().map(Self.agent)
    }

    enum CredentialCheck: Sendable { case valid, revoked, refused }

    /// Whether `credential` is this agent's, and if so whether it was revoked.
    func checkCredential(agentID: String, credential: String) async throws -> CredentialCheck {
        struct Row: Decodable { let revoked: Int }
        guard let row = try await sql.raw("""
            SELECT revoked FROM agents WHERE id = \(bind: agentID) AND credential_hash = \(bind: Secrets.hash(credential))
            """).first(decoding: Row.self)
        else { return .refused }
        return row.revoked == 0 ? .valid : .revoked
    }

    func agents() async throws -> [AgentRecord] {
        try await sql.raw("SELECT \(unsafeRaw: Self.agentColumns) FROM agents ORDER BY id").all().map(Self.agent)
    }

    /// `metricsAddress`: where Prometheus scrapes the agent (`MetricsTarget`), nil when unknown.
    func recordHello(_ hello: AgentHello, metricsAddress: String?) async throws {
        try await sql.raw("""
            UPDATE agents SET announced_labels = \(bind: try JSONText.encode(hello.labels)), version = \(bind: hello.version),
                facts = \(bind: try JSONText.encode(hello.facts)), applied_version = \(bind: hello.appliedVersion),
                metrics_address = \(bind: metricsAddress), last_seen = \(bind: Self.now())
            WHERE id = \(bind: hello.agentID)
            """).run()
    }

    /// The heartbeat's counters become the agent's report, and what they grew by since the last one goes to
    /// the traffic history.
    func recordHeartbeat(agentID: String, _ heartbeat: AgentHeartbeat) async throws {
        let now = Self.now()
        let previous = try await sql.raw("SELECT report FROM agents WHERE id = \(bind: agentID)").first()
            .flatMap { try? JSONText.decode([String: PipelineReport].self, try $0.decode(column: "report", as: String.self)) } ?? [:]
        try await sql.raw("""
            UPDATE agents SET last_seen = \(bind: now), report = \(bind: try JSONText.encode(heartbeat.pipelines))
            WHERE id = \(bind: agentID)
            """).run()
        let history = TrafficHistory(database: database)
        try await history.record(agent: agentID, time: now, TrafficHistory.growth(previous: previous, current: heartbeat.pipelines))
        if let addresses = heartbeat.addresses {
            try await history.recordAddresses(agent: agentID, time: now, TrafficHistory.checked(addresses, pipelines: Set(heartbeat.pipelines.keys)))
        }
    }

    func recordPushed(agentID: String, version: String) async throws {
        try await sql.raw("UPDATE agents SET desired_version = \(bind: version) WHERE id = \(bind: agentID)").run()
    }

    func recordAck(agentID: String, version: String) async throws {
        try await sql.raw("""
            UPDATE agents SET applied_version = \(bind: version), nacked_version = NULL, last_error = NULL, last_seen = \(bind: Self.now())
            WHERE id = \(bind: agentID)
            """).run()
    }

    func recordNack(agentID: String, version: String, errors: [String]) async throws {
        try await sql.raw("""
            UPDATE agents SET nacked_version = \(bind: version), last_error = \(bind: errors.joined(separator: "\n")),
                last_seen = \(bind: Self.now())
            WHERE id = \(bind: agentID)
            """).run()
    }

    func revoke(agentID: String) async throws -> Bool {
        guard try await agent(id: agentID) != nil else { return false }
        try await sql.raw("UPDATE agents SET revoked = 1 WHERE id = \(bind: agentID)").run()
        return true
    }

    func setOperatorLabels(agentID: String, _ labels: [String: String]) async throws -> Bool {
        guard try await agent(id: agentID) != nil else { return false }
        try await sql.raw("UPDATE agents SET operator_labels = \(bind: try JSONText.encode(labels)) WHERE id = \(bind: agentID)").run()
        return true
    }

    func deleteAgent(id: String) async throws -> Bool {
        try await deleting("DELETE FROM agents WHERE id = \(bind: id)", exists: "SELECT id FROM agents WHERE id = \(bind: id)")
    }

    /// Removes agents not seen since `cutoff`; returns their ids.
    func removeAgents(lastSeenBefore cutoff: Double) async throws -> [String] {
        try await sql.raw("DELETE FROM agents WHERE last_seen < \(bind: cutoff) RETURNING id").all()
            .map { try $0.decode(column: "id", as: String.self) }
    }

    private static func agent(_ row: any SQLRow) throws -> AgentRecord {
        func labels(_ column: String) throws -> [String: String] {
            try JSONText.decode([String: String].self, try row.decode(column: column, as: String.self))
        }
        return AgentRecord(
            id: try row.decode(column: "id", as: String.self), revoked: try row.decode(column: "revoked", as: Int.self) != 0,
            enrollmentLabels: try labels("enrollment_labels"), announcedLabels: try labels("announced_labels"),
            operatorLabels: try labels("operator_labels"), version: try row.decode(column: "version", as: String.self),
            facts: try labels("facts"), enrolledAt: try row.decode(column: "enrolled_at", as: Double.self),
            lastSeen: try row.decode(column: "last_seen", as: Double.self),
            desiredVersion: try row.decode(column: "desired_version", as: String?.self),
            appliedVersion: try row.decode(column: "applied_version", as: String?.self),
            nackedVersion: try row.decode(column: "nacked_version", as: String?.self),
            lastError: try row.decode(column: "last_error", as: String?.self),
            report: try JSONText.decode([String: PipelineReport].self, try row.decode(column: "report", as: String.self)),
            metricsAddress: try row.decode(column: "metrics_address", as: String?.self))
    }

    // MARK: - Pipeline documents and assignments

    func putPipeline(name: String, document: String) async throws {
        let now = Self.now()
        try await sql.raw("""
            INSERT INTO pipelines (name, document, updated_at) VALUES (\(bind: name), \(bind: document), \(bind: now))
            ON CONFLICT (name) DO UPDATE SET document = excluded.document, updated_at = excluded.updated_at
            """).run()
    }

    func pipelines() async throws -> [PipelineDocument] {
        try await sql.raw("SELECT name, document, updated_at FROM pipelines ORDER BY name").all().map(Self.pipeline)
    }

    func pipeline(name: String) async throws -> PipelineDocument? {
        try await sql.raw("SELECT name, document, updated_at FROM pipelines WHERE name = \(bind: name)").first().map(Self.pipeline)
    }

    /// Removes the document and every assignment of it.
    func deletePipeline(name: String) async throws -> Bool {
        guard try await pipeline(name: name) != nil else { return false }
        try await sql.raw("DELETE FROM assignments WHERE pipeline = \(bind: name)").run()
        try await sql.raw("DELETE FROM pipelines WHERE name = \(bind: name)").run()
        return true
    }

    private static func pipeline(_ row: any SQLRow) throws -> PipelineDocument {
        PipelineDocument(
            name: try row.decode(column: "name", as: String.self), document: try row.decode(column: "document", as: String.self),
            updatedAt: try row.decode(column: "updated_at", as: Double.self))
    }

    func createAssignment(pipeline: String, agent: String?, selector: LabelSelector?) async throws -> Assignment {
        let assignment = Assignment(id: Secrets.id(), pipeline: pipeline, agent: agent, selector: selector, createdAt: Self.now())
        try await sql.raw("""
            INSERT INTO assignments (id, pipeline, agent, selector, created_at)
            VALUES (\(bind: assignment.id), \(bind: pipeline), \(bind: agent), \(bind: selector?.description), \(bind: assignment.createdAt))
            """).run()
        return assignment
    }

    func assignments() async throws -> [Assignment] {
        try await sql.raw("SELECT id, pipeline, agent, selector, created_at FROM assignments ORDER BY created_at, id").all().map { row in
            Assignment(
                id: try row.decode(column: "id", as: String.self), pipeline: try row.decode(column: "pipeline", as: String.self),
                agent: try row.decode(column: "agent", as: String?.self),
                selector: try row.decode(column: "selector", as: String?.self).map { try LabelSelector(parsing: $0) },
                createdAt: try row.decode(column: "created_at", as: Double.self))
        }
    }

    func deleteAssignment(id: String) async throws -> Bool {
        try await deleting("DELETE FROM assignments WHERE id = \(bind: id)", exists: "SELECT id FROM assignments WHERE id = \(bind: id)")
    }

    /// Documents, assignments and lists, read together for rendering bundles.
    func desiredState() async throws -> DesiredState {
        DesiredState(
            documents: try await pipelines(), assignments: try await assignments(), lists: try await lists(), relays: try await relays(),
            vpnServers: try await renderedVPNServers())
    }

    // MARK: - Relays

    /// False when a relay of that name exists. The key is stored sealed.
    func createRelay(_ relay: Relay) async throws -> Bool {
        guard try await sql.raw("SELECT name FROM relays WHERE name = \(bind: relay.name)").first() == nil else { return false }
        try await sql.raw("""
            INSERT INTO relays (name, spec, created_at) VALUES (\(bind: relay.name), \(bind: try sealedSpec(relay)), \(bind: relay.createdAt))
            """).run()
        return true
    }

    func relays() async throws -> [Relay] {
        try await sql.raw("SELECT spec FROM relays ORDER BY name").all().map { row in
            var relay = try JSONText.decode(Relay.self, try row.decode(column: "spec", as: String.self))
            relay.key = try secrets.open(relay.key, for: "relay/\(relay.name)")
            return relay
        }
    }

    /// Seals keys stored in the clear (by a version before sealing), and proves every sealed one opens with
    /// this instance's key: a coordinator with the wrong key file refuses to start instead of failing later.
    func sealStoredSecrets() async throws -> Int {
        var sealed = 0
        for row in try await sql.raw("SELECT spec FROM relays").all() {
            let relay = try JSONText.decode(Relay.self, try row.decode(column: "spec", as: String.self))
            guard !SecretBox.isSealed(relay.key) else {
                _ = try secrets.open(relay.key, for: "relay/\(relay.name)")
                continue
            }
            try await sql.raw("UPDATE relays SET spec = \(bind: try sealedSpec(relay)) WHERE name = \(bind: relay.name)").run()
            sealed += 1
        }
        try await checkVPNSecrets()
        return sealed
    }

    private func sealedSpec(_ relay: Relay) throws -> String {
        var stored = relay
        stored.key = try secrets.seal(relay.key, for: "relay/\(relay.name)")
        return try JSONText.encode(stored)
    }

    func deleteRelay(name: String) async throws -> Bool {
        try await deleting("DELETE FROM relays WHERE name = \(bind: name)", exists: "SELECT name FROM relays WHERE name = \(bind: name)")
    }

    // MARK: - Named lists

    func putList(name: String, kind: NamedListKind, entries: [ListEntry]) async throws {
        try await sql.raw("""
            INSERT INTO lists (name, kind, entries, updated_at)
            VALUES (\(bind: name), \(bind: kind.rawValue), \(bind: try JSONText.encode(entries)), \(bind: Self.now()))
            ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, entries = excluded.entries, updated_at = excluded.updated_at
            """).run()
    }

    func lists() async throws -> [NamedList] {
        try await sql.raw("SELECT name, kind, entries, updated_at FROM lists ORDER BY name").all().map(Self.list)
    }

    func list(name: String) async throws -> NamedList? {
        try await sql.raw("SELECT name, kind, entries, updated_at FROM lists WHERE name = \(bind: name)").first().map(Self.list)
    }

    func deleteList(name: String) async throws -> Bool {
        try await deleting("DELETE FROM lists WHERE name = \(bind: name)", exists: "SELECT name FROM lists WHERE name = \(bind: name)")
    }

    private static func list(_ row: any SQLRow) throws -> NamedList {
        NamedList(
            name: try row.decode(column: "name", as: String.self),
            kind: NamedListKind(rawValue: try row.decode(column: "kind", as: String.self)) ?? .destinations,
            entries: try JSONText.decode([ListEntry].self, try row.decode(column: "entries", as: String.self)),
            updatedAt: try row.decode(column: "updated_at", as: Double.self))
    }

    // MARK: -

    /// Deletes and says whether there was something to delete.
    private func deleting(_ delete: SQLQueryString, exists: SQLQueryString) async throws -> Bool {
        guard try await sql.raw(exists).first() != nil else { return false }
        try await sql.raw(delete).run()
        return true
    }
}

/// Maps and reports are kept as JSON text, which both databases store alike.
enum JSONText {
    static func encode(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ text: String) throws -> T {
        try JSONDecoder().decode(type, from: Data(text.utf8))
    }
}
