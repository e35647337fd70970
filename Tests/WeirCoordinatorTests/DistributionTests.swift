import Foundation
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
        ]
        for message in messages {
            #expect(try WireCoding.decode(AgentMessage.self, from: try WireCoding.encode(message)) == message)
        }
        #expect(try WireCoding.encode(AgentMessage.ack(version: "v1")) == #"{"type":"ack","version":"v1"}"#)
        let bundle = CoordinatorMessage.bundle(ConfigBundle(files: [.init(name: "a.yaml", content: "pipelines: {}")]))
        #expect(try WireCoding.decode(CoordinatorMessage.self, from: try WireCoding.encode(bundle)) == bundle)
        #expect(throws: (any Error).self) { try WireCoding.decode(AgentMessage.self, from: #"{"type":"bundle","version":"x","files":[]}"#) }
    }
}
