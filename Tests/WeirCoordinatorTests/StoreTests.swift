import Foundation
import Logging
import NIOPosix
import Testing
@testable import WeirCoordinator

/// The store on a real SQLite file: the same SQL runs on PostgreSQL (see the integration tests).
@Suite struct StoreTests {
    static func withStore(_ body: (CoordinatorStore) async throws -> Void) async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("weir-store-\(UUID().uuidString).db").path
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let database = try await CoordinatorDatabase.open(.sqlite(path: path), group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "test"))
        try await database.migrate()
        try await database.migrate()  // twice: creating tables is idempotent
        do {
            try await body(CoordinatorStore(database: database))
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
}
