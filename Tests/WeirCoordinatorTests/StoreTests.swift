import Foundation
import Logging
import NIOPosix
import Testing
@testable import WeirCoordinator

/// The store on a real SQLite file: the same SQL runs on PostgreSQL (see the integration tests).
@Suite struct StoreTests {
    static func withStore(
        path: String = FileManager.default.temporaryDirectory.appendingPathComponent("weir-store-\(UUID().uuidString).db").path,
        keyFile: String? = nil, _ body: (CoordinatorStore) async throws -> Void
    ) async throws {
        let keyFile = keyFile ?? path + ".key"
        defer { for suffix in ["", "-wal", "-shm", ".key"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let database = try await CoordinatorDatabase.open(.sqlite(path: path), group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"))
        try await database.migrate()
        try await database.migrate()  // twice: creating tables is idempotent
        do {
            try await body(CoordinatorStore(database: database, secrets: try SecretBox.loadOrCreate(keyFile: keyFile)))
        } catch {
            await database.shutdown()
            throw error
        }
        await database.shutdown()
    }

    @Test("an enrollment token with N uses enrolls N agents; ids already enrolled are refused until revoked")
    func enrollment() async throws {
        try await Self.withStore { store in
            let (_, token) = try await store.createEnrollmentToken(labels: ["role": "edge"], expiresAt: nil, uses: 2)
            guard case .enrolled(let a) = try await store.enroll(agentID: "a", tokenSecret: token, credentialHash: Secrets.hash("ca")) else {
                Issue.record("first enrollment refused")
                return
            }
            #expect(a.labels == ["role": "edge"])
            guard case .agentExists = try await store.enroll(agentID: "a", tokenSecret: token, credentialHash: Secrets.hash("x")) else {
                Issue.record("an enrolled id was taken over")
                return
            }
            guard case .enrolled = try await store.enroll(agentID: "b", tokenSecret: token, credentialHash: Secrets.hash("cb")) else {
                Issue.record("second enrollment refused")
                return
            }
            guard case .tokenInvalid = try await store.enroll(agentID: "c", tokenSecret: token, credentialHash: Secrets.hash("cc")) else {
                Issue.record("a used-up token enrolled a third agent")
                return
            }
            #expect(try await store.checkCredential(agentID: "a", credential: "ca") == .valid)
            #expect(try await store.checkCredential(agentID: "a", credential: "cb") == .refused)
            #expect(try await store.revoke(agentID: "a"))
            #expect(try await store.checkCredential(agentID: "a", credential: "ca") == .revoked)
            #expect(try await store.checkCredential(agentID: "a", credential: "cb") == .refused)
            let (_, expired) = try await store.createEnrollmentToken(labels: [:], expiresAt: Date().timeIntervalSince1970 - 1, uses: nil)
            guard case .tokenInvalid = try await store.enroll(agentID: "d", tokenSecret: expired, credentialHash: "h") else {
                Issue.record("an expired token enrolled an agent")
                return
            }
        }
    }

    @Test("ACK clears a NACK; agents not seen within the retention are removed")
    func agentStatus() async throws {
        try await Self.withStore { store in
            let (_, token) = try await store.createEnrollmentToken(labels: [:], expiresAt: nil, uses: nil)
            _ = try await store.enroll(agentID: "a", tokenSecret: token, credentialHash: "h")
            try await store.recordNack(agentID: "a", version: "v2", errors: ["one", "two"])
            var agent = try #require(try await store.agent(id: "a"))
            #expect(agent.nackedVersion == "v2" && agent.lastError == "one\ntwo")
            try await store.recordAck(agentID: "a", version: "v3")
            agent = try #require(try await store.agent(id: "a"))
            #expect(agent.appliedVersion == "v3" && agent.nackedVersion == nil && agent.lastError == nil)
            #expect(try await store.removeAgents(lastSeenBefore: Date().timeIntervalSince1970 - 60).isEmpty)
            #expect(try await store.removeAgents(lastSeenBefore: Date().timeIntervalSince1970 + 1) == ["a"])
            #expect(try await store.agents().isEmpty)
        }
    }

    @Test("deleting a pipeline document deletes its assignments")
    func documents() async throws {
        try await Self.withStore { store in
            try await store.putPipeline(name: "p", document: "pipelines: {}")
            try await store.putPipeline(name: "p", document: "pipelines: {}\n# v2")
            #expect(try await store.pipeline(name: "p")?.document == "pipelines: {}\n# v2")
            _ = try await store.createAssignment(pipeline: "p", agent: nil, selector: try LabelSelector(parsing: "a=b"))
            #expect(try await store.assignments().first?.selector?.description == "a=b")
            #expect(try await store.deletePipeline(name: "p"))
            #expect(try await store.assignments().isEmpty)
            #expect(try await !store.deletePipeline(name: "p"))
        }
    }

    static func mode(_ path: String) -> Int {
        ((try? FileManager.default.attributesOfItem(atPath: path)[.posixPermissions]) as? NSNumber)?.intValue ?? -1
    }

    @Test("secrets at rest: the database, its -wal and -shm are 0600; relay keys are sealed, open only with the same key file, and old clear ones get sealed")
    func secretsAtRest() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("weir-store-\(UUID().uuidString).db").path
        let relay = Relay(
            name: "r1", entry: .init(agent: "a", selector: nil), exit: .init(agent: "b", listen: "0.0.0.0:9000", address: "198.51.100.7:9000"),
            listen: "0.0.0.0:8000", target: "127.0.0.1:80", cipher: Relay.ciphers[0], key: "the-relay-key-0123456789", createdAt: 1)
        // An older version's file: 0644.
        FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o644])
        let otherKey = path + ".other-key"
        defer { try? FileManager.default.removeItem(atPath: otherKey) }
        try await Self.withStore(path: path) { store in
            #expect(try await store.createRelay(relay))
            #expect(try await store.relays() == [relay])
            let raw = try await store.database.sql.raw("SELECT spec FROM relays").all().map { try $0.decode(column: "spec", as: String.self) }
            #expect(raw.count == 1 && !raw[0].contains(relay.key) && raw[0].contains(SecretBox.prefix), "\(raw)")
            for file in [path, path + "-wal", path + "-shm", path + ".key"] {
                #expect(Self.mode(file) == 0o600, "\(file): \(String(Self.mode(file), radix: 8))")
            }
            // A row written in the clear (by a version before sealing) is sealed at start and still opens.
            var clear = relay
            clear.name = "r0"
            try await store.database.sql.raw("INSERT INTO relays (name, spec, created_at) VALUES ('r0', \(bind: try JSONText.encode(clear)), 0)").run()
            #expect(try await store.sealStoredSecrets() == 1)
            #expect(try await store.sealStoredSecrets() == 0)
            #expect(try await store.relays().map(\.key) == [relay.key, relay.key])
            // Moved to another row, a sealed key does not open.
            try await store.database.sql.raw("UPDATE relays SET spec = \(bind: raw[0].replacingOccurrences(of: "\"r1\"", with: "\"r0\"")) WHERE name = 'r0'").run()
            await #expect(throws: SecretBox.Failure.self) { _ = try await store.relays() }
            try await store.database.sql.raw("DELETE FROM relays WHERE name = 'r0'").run()
        }
        // The same database with another instance's key: refused at start, naming the key file.
        _ = try SecretBox.loadOrCreate(keyFile: otherKey)
        let database = try await CoordinatorDatabase.open(.sqlite(path: path + "2"), group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "t"))
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + "2" + suffix) } }
        try await database.migrate()
        let first = CoordinatorStore(database: database, secrets: try SecretBox.loadOrCreate(keyFile: path + "2.key"))
        defer { try? FileManager.default.removeItem(atPath: path + "2.key") }
        #expect(try await first.createRelay(relay))
        let wrong = CoordinatorStore(database: database, secrets: try SecretBox.loadOrCreate(keyFile: otherKey))
        await #expect {
            _ = try await wrong.sealStoredSecrets()
        } throws: { error in
            "\(error)".contains("does not open with the secrets key \(otherKey)")
        }
        await database.shutdown()
    }
}
