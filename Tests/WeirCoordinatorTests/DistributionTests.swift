import Foundation
import NIOConcurrencyHelpers
import Testing
import WeirCoordinatorProtocol
@testable import WeirCoordinator

/// Bundles, versions, selectors and the wire messages, without I/O.
@Suite struct DistributionTests {
    static func agent(_ id: String, labels: [String: String]) -> AgentRecord {
        AgentRecord(
            id: id, revoked: false, enrollmentLabels: [:], announcedLabels: labels, operatorLabels: [:], version: "", facts: [:],
            enrolledAt: 0, lastSeen: 0, report: [:])
    }

    @Test("a bundle's version is its content hash: order does not matter, any change does")
    func bundleVersion() {
        let a = ConfigBundle.File(name: "a.yaml", content: "x"), b = ConfigBundle.File(name: "b.yaml", content: "y")
        #expect(ConfigBundle(files: [a, b]).version == ConfigBundle(files: [b, a]).version)
        #expect(ConfigBundle(files: [a, b]).version != ConfigBundle(files: [a]).version)
        // Moving bytes between name and content changes the version (lengths are hashed too).
        #expect(ConfigBundle(files: [.init(name: "ab.yaml", content: "c")]).version != ConfigBundle(files: [.init(name: "a", content: "b.yamlc")]).version)
        #expect(ConfigBundle(files: [a]).isIntact)
        #expect(!ConfigBundle(files: [.init(name: "../etc/passwd", content: "")]).isIntact)
    }

    @Test("documents reach agents by id or by label selector, each once")
    func desiredState() throws {
        let edge = try LabelSelector(parsing: "role=edge")
        let edgeFra = try LabelSelector(parsing: "site=fra, role=edge")
        let state = DesiredState(
            documents: ["one", "two", "three"].map { PipelineDocument(name: $0, document: "pipelines: {}\n# \($0)", updatedAt: 0) },
            assignments: [
                Assignment(id: "1", pipeline: "one", agent: nil, selector: edge, createdAt: 0),
                Assignment(id: "2", pipeline: "two", agent: "b", selector: nil, createdAt: 0),
                Assignment(id: "3", pipeline: "one", agent: "a", selector: nil, createdAt: 0),
                Assignment(id: "4", pipeline: "three", agent: nil, selector: edgeFra, createdAt: 0),
                Assignment(id: "5", pipeline: "deleted", agent: "a", selector: nil, createdAt: 0),
            ], lists: [])
        let a = state.bundle(for: Self.agent("a", labels: ["role": "edge", "site": "fra"]))
        #expect(a.files.map(\.name) == ["one.yaml", "three.yaml"])
        let b = state.bundle(for: Self.agent("b", labels: ["role": "core"]))
        #expect(b.files.map(\.name) == ["two.yaml"])
        #expect(state.bundle(for: Self.agent("c", labels: [:])).files.isEmpty)
        #expect(edgeFra.description == "role=edge,site=fra")
        #expect(throws: APIError.self) { try LabelSelector(parsing: "role") }
        #expect(throws: APIError.self) { try LabelSelector(parsing: "ro le=x") }
    }

    @Test("wire messages round-trip as JSON with their type")
    func messages() throws {
        let messages: [AgentMessage] = [
            .hello(AgentHello(agentID: "a", version: "0.1.0", labels: ["k": "v"], facts: ["os": "x"], appliedVersion: nil)),
            .heartbeat(AgentHeartbeat(appliedVersion: "v1", pipelines: ["p": PipelineReport(bytesIn: 1)])),
            .ack(version: "v1"), .nack(version: "v2", errors: ["e1", "e2"]),
            .dnsQueries(DNSQueriesResponse(id: "q1", entries: [
                DNSQueryEntry(time: "2026-12-05T00:00:00.000Z", pipeline: "dns", client: "10.0.0.2", name: "a.test", type: "A", result: "cached",
                              rule: nil, upstream: nil, ms: 0.02)
            ], pipelines: ["dns"])),
        ]
        for message in messages {
            #expect(try WireCoding.decode(AgentMessage.self, from: try WireCoding.encode(message)) == message)
        }
        #expect(try WireCoding.encode(AgentMessage.ack(version: "v1")) == #"{"type":"ack","version":"v1"}"#)
        let bundle = CoordinatorMessage.bundle(ConfigBundle(files: [.init(name: "a.yaml", content: "pipelines: {}")]))
        #expect(try WireCoding.decode(CoordinatorMessage.self, from: try WireCoding.encode(bundle)) == bundle)
        #expect(throws: (any Error).self) { try WireCoding.decode(AgentMessage.self, from: #"{"type":"bundle","version":"x","files":[]}"#) }
        let question = CoordinatorMessage.dnsQueries(DNSQueriesRequest(id: "q1", pipeline: "dns", search: "x", result: "blocked", limit: 5))
        #expect(try WireCoding.decode(CoordinatorMessage.self, from: try WireCoding.encode(question)) == question)
    }

    static func connection(_ agentID: String, sent: NIOLockedValueBox<[CoordinatorMessage]>) -> AgentConnection {
        AgentConnection(agentID: agentID, number: 1, send: { message in sent.withLockedValue { $0.append(message) } }, close: { _ in })
    }

    @Test("a question to an agent gets its answer by id; an answer from another agent or a late one is dropped; silence ends at the deadline")
    func agentQuestions() async throws {
        let questions = AgentQuestions()
        let sent = NIOLockedValueBox<[CoordinatorMessage]>([])
        let connection = Self.connection("a", sent: sent)
        let asking = Task { try await questions.dnsQueries(DNSQueriesRequest(id: "", limit: 3), over: connection, timeout: .seconds(10)) }
        var asked: DNSQueriesRequest?
        for _ in 0..<200 where asked == nil {
            try await Task.sleep(for: .milliseconds(10))
            if case .dnsQueries(let request)? = sent.withLockedValue({ $0.first }) { asked = request }
        }
        let request = try #require(asked)
        #expect(!request.id.isEmpty && request.limit == 3)
        // Another agent cannot answer a question it was not asked, even with the right id.
        await questions.answered(DNSQueriesResponse(id: request.id, entries: [], pipelines: ["forged"]), from: "b")
        await questions.answered(DNSQueriesResponse(id: request.id, entries: [], pipelines: ["dns"]), from: "a")
        #expect(try await asking.value.pipelines == ["dns"])
        await questions.answered(DNSQueriesResponse(id: request.id, entries: [], pipelines: ["late"]), from: "a")

        let silent = Self.connection("old-agent", sent: NIOLockedValueBox([]))
        let started = ContinuousClock.now
        await #expect(throws: AgentQuestions.Unanswered.self) {
            try await questions.dnsQueries(DNSQueriesRequest(id: "", limit: 3), over: silent, timeout: .milliseconds(200))
        }
        #expect(ContinuousClock.now - started < .seconds(5))
    }
}
