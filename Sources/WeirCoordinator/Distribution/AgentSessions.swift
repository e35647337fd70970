import Foundation
import HTTPTypes
import HummingbirdWebSocket
import Logging
import NIOCore
import WeirCoordinatorProtocol

/// Who is dialing, judged from the upgrade request's headers before anything is upgraded.
enum AgentIdentity: Sendable {
    /// An enrolled agent with its valid credential.
    case enrolled(agentID: String)
    /// An agent presenting an enrollment token; it is enrolled once the WebSocket is open.
    case enrolling(agentID: String, token: String)
}

struct AgentRefusal: Error, Sendable {
    let status: HTTPResponse.Status
    let message: String
}

/// Accepts agents' WebSockets: enrollment, hello, heartbeats, ACK/NACK.
struct AgentSessions: Sendable {
    static let agentIDHeader = HTTPField.Name(AgentHeaders.agentID)!
    static let enrollmentHeader = HTTPField.Name(AgentHeaders.enrollmentToken)!
    /// Bundles are one message; this bounds them (and anything an agent sends).
    static let maxMessageSize = 64 << 20

    let store: CoordinatorStore
    let distributor: Distributor
    let questions: AgentQuestions
    let heartbeatInterval: Duration
    let logger: Logger

    /// Checks the headers without changing anything (the HTTP route for a refused upgrade asks again).
    func identify(_ headers: HTTPFields) async throws -> AgentIdentity {
        guard let agentID = headers[Self.agentIDHeader], Identifiers.isValidAgentID(agentID) else {
            throw AgentRefusal(status: .badRequest, message: "missing or invalid \(AgentHeaders.agentID) header")
        }
        if let authorization = headers[.authorization], authorization.hasPrefix("Bearer ") {
            let credential = String(authorization.dropFirst("Bearer ".count))
            switch try await store.checkCredential(agentID: agentID, credential: credential) {
            case .valid:
                return .enrolled(agentID: agentID)
            case .revoked:
                throw AgentRefusal(
                    status: .unauthorized,
                    message: "agent \"\(agentID)\" was revoked: delete it on the coordinator and enroll it again with a new token")
            case .refused:
                throw AgentRefusal(status: .unauthorized, message: "agent credential refused: not the credential of agent \"\(agentID)\"")
            }
        }
        if let token = headers[Self.enrollmentHeader] {
            guard let record = try await store.enrollmentToken(secret: token), record.isUsable(at: Date().timeIntervalSince1970) else { throw AgentRefusal(status: .unauthorized, message: "enrollment token refused (unknown, expired or used up)") }
            if let existing = try await store.agent(id: agentID), !existing.revoked {
                throw AgentRefusal(status: .conflict, message: "agent \"\(agentID)\" is already enrolled; delete it before enrolling again")
            }
            return .enrolling(agentID: agentID, token: token)
        }
        throw AgentRefusal(status: .unauthorized, message: "an agent needs a credential (Authorization: Bearer) or an enrollment token")
    }

    /// `peer`: the address the connection came from (an agent announcing 0.0.0.0 is scraped there).
    func serve(_ identity: AgentIdentity, peer: String?, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async throws {
        let send: @Sendable (CoordinatorMessage) async throws -> Void = { message in
            try await outbound.writeTextMessage(try WireCoding.encode(message))
        }
        let agentID: String
        var credential: String?
        switch identity {
        case .enrolled(let id):
            agentID = id
        case .enrolling(let id, let token):
            let secret = Secrets.make(prefix: "weir_agent_")
            switch try await store.enroll(agentID: id, tokenSecret: token, credentialHash: Secrets.hash(secret)) {
            case .enrolled:
                logger.info("agent enrolled", metadata: ["agent": "\(id)"])
            case .tokenInvalid:
                try await outbound.close(.policyViolation, reason: "enrollment token refused")
                return
            case .agentExists:
                try await outbound.close(.policyViolation, reason: "agent already enrolled")
                return
            }
            agentID = id
            credential = secret
        }
        try await send(.welcome(AgentWelcome(heartbeatIntervalSeconds: heartbeatInterval.seconds, credential: credential)))

        let connection = AgentConnection(
            agentID: agentID, number: await distributor.makeNumber(), send: send,
            close: { reason in try? await outbound.close(.policyViolation, reason: reason) })
        var registered = false
        defer {
            if registered { Task { await distributor.unregister(connection) } }
        }
        for try await message in inbound.messages(maxSize: Self.maxMessageSize) {
            guard case .text(let text) = message, let decoded = try? WireCoding.decode(AgentMessage.self, from: text) else {
                try await outbound.close(.unacceptableData, reason: "expected an agent message as JSON text")
                return
            }
            await distributor.heard(from: connection)
            switch decoded {
            case .hello(let hello):
                guard hello.agentID == agentID else {
                    try await outbound.close(.policyViolation, reason: "hello names another agent")
                    return
                }
                try await store.recordHello(hello, metricsAddress: MetricsTarget.address(announced: hello.metricsAddress, peer: peer))
                if !registered {
                    registered = true
                    logger.info("agent connected", metadata: ["agent": "\(agentID)", "version": "\(hello.version)"])
                    await distributor.register(connection)
                }
            case .heartbeat(let heartbeat):
                try await store.recordHeartbeat(agentID: agentID, heartbeat)
            case .ack(let version):
                try await store.recordAck(agentID: agentID, version: version)
                await distributor.acknowledged(connection, version: version)
                logger.info("bundle applied", metadata: ["agent": "\(agentID)", "version": "\(version)"])
            case .dnsQueries(let response):
                await questions.answered(response, from: agentID)
            case .nack(let version, let errors):
                try await store.recordNack(agentID: agentID, version: version, errors: errors)
                await distributor.refused(connection, version: version)
                logger.warning("bundle refused", metadata: ["agent": "\(agentID)", "version": "\(version)", "errors": "\(errors)"])
            }
        }
        logger.info("agent disconnected", metadata: ["agent": "\(agentID)"])
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
