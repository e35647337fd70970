import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOSSL
import Synchronization
import WeirCore
import WeirCoordinatorProtocol

/// The agent's side of the coordinator connection: dials out (so agents behind NAT work), enrolls once,
/// says hello, sends heartbeats, applies bundles and answers ACK or NACK. When the coordinator is away the
/// agent keeps running what it has and dials again with exponential backoff and jitter.
struct CoordinatorClient: Sendable {
    let settings: CoordinatorSettings
    let agentID: String
    /// `state_dir/coordinator`.
    let stateDirectory: String
    let agent: Agent
    let logger: Logger

    static let firstDelay = Duration.milliseconds(500)
    static let maxDelay = Duration.seconds(30)

    var credentialPath: String { settings.credentialFile ?? (stateDirectory as NSString).appendingPathComponent("credential") }

    var connectURL: String {
        let trimmed = settings.url.hasSuffix("/") ? String(settings.url.dropLast()) : settings.url
        return URL(string: trimmed).map { $0.path.isEmpty } ?? true ? trimmed + agentConnectPath : trimmed
    }

    func run() async {
        var delay = Self.firstDelay
        while !Task.isCancelled {
            let welcomed = await connectOnce()
            if Task.isCancelled { return }
            if welcomed { delay = Self.firstDelay }
            // Full jitter over the upper half, so a fleet that lost its coordinator does not come back in step.
            let pause = delay * Double.random(in: 0.5...1.0)
            logger.info("coordinator connection closed; dialing again", metadata: ["in": "\(pause)"])
            try? await Task.sleep(for: pause)
            delay = min(delay * 2, Self.maxDelay)
        }
    }

    /// One connection, from dialing to closing. True when the coordinator welcomed the agent.
    private func connectOnce() async -> Bool {
        let welcomed = Mutex(false)
        do {
            var headers = HTTPFields()
            headers[HTTPField.Name(AgentHeaders.agentID)!] = agentID
            if let credential = readSecret(credentialPath) {
                headers[.authorization] = "Bearer \(credential)"
            } else if let tokenFile = settings.tokenFile, let token = readSecret(tokenFile) {
                headers[HTTPField.Name(AgentHeaders.enrollmentToken)!] = token
            } else {
                logger.error("no coordinator credential and no enrollment token", metadata: [
                    "credential_file": "\(credentialPath)", "token_file": "\(settings.tokenFile ?? "(not set)")",
                ])
                return false
            }
            var tls = TLSConfiguration.makeClientConfiguration()
            if let ca = settings.caFile { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
            let configuration = WebSocketClientConfiguration(
                maxFrameSize: 64 << 20, additionalHeaders: headers, autoPing: .enabled(timePeriod: .seconds(20)))
            try await WebSocketClient.connect(url: connectURL, configuration: configuration, tlsConfiguration: tls, logger: logger) {
                inbound, outbound, _ in
                try await session(inbound: inbound, outbound: outbound, welcomed: welcomed)
            }
        } catch {
            if !Task.isCancelled { logger.warning("coordinator connection failed", metadata: ["url": "\(connectURL)", "error": "\(error)"]) }
        }
        return welcomed.withLock { $0 }
    }

    private func session(inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, welcomed: borrowing Mutex<Bool>) async throws {
        @Sendable func send(_ message: AgentMessage) async throws { try await outbound.writeTextMessage(try WireCoding.encode(message)) }
        var messages = inbound.messages(maxSize: 64 << 20).makeAsyncIterator()
        guard case .text(let text)? = try await messages.next(), case .welcome(let welcome) = try WireCoding.decode(CoordinatorMessage.self, from: text)
        else {
            logger.error("the coordinator did not welcome the agent")
            return
        }
        if let credential = welcome.credential {
            try saveCredential(credential)
            logger.notice("enrolled with the coordinator; credential stored", metadata: ["file": "\(credentialPath)"])
        }
        welcomed.withLock { $0 = true }
        try await send(.hello(AgentHello(
            agentID: agentID, version: AgentInfo.version, labels: settings.labels, facts: AgentInfo.hostFacts(),
            appliedVersion: await agent.appliedBundleVersion())))
        logger.info("connected to the coordinator", metadata: ["url": "\(connectURL)"])

        let interval = Duration.milliseconds(Int64(max(welcome.heartbeatIntervalSeconds, 0.1) * 1000))
        // The inbound stream does not end on cancellation by itself: closing the WebSocket ends it, so an
        // agent that stops says goodbye and exits at once.
        try await withTaskCancellationHandler {
            try await exchange(messages: &messages, send: send, interval: interval)
        } onCancel: {
            Task { try? await outbound.close(.goingAway, reason: "agent stopping") }
        }
    }

    private func exchange(
        messages: inout WebSocketInboundMessageStream.AsyncIterator, send: @escaping @Sendable (AgentMessage) async throws -> Void,
        interval: Duration
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    try await send(.heartbeat(AgentHeartbeat(
                        appliedVersion: await agent.appliedBundleVersion(), pipelines: await agent.pipelineReports())))
                    try await Task.sleep(for: interval)
                }
            }
            while let message = try await messages.next() {
                guard case .text(let text) = message, let decoded = try? WireCoding.decode(CoordinatorMessage.self, from: text) else {
                    logger.warning("ignoring a message from the coordinator that is not understood")
                    continue
                }
                guard case .bundle(let bundle) = decoded else { continue }
                if let errors = await agent.apply(bundle) {
                    logger.error("coordinator bundle refused", metadata: ["version": "\(bundle.version)", "errors": "\(errors)"])
                    try await send(.nack(version: bundle.version, errors: errors))
                } else {
                    logger.info("coordinator bundle applied", metadata: ["version": "\(bundle.version)"])
                    try await send(.ack(version: bundle.version))
                }
            }
            group.cancelAll()
        }
    }

    private func readSecret(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text
    }

    /// Written to a temporary file and renamed, readable by the agent's user only.
    private func saveCredential(_ credential: String) throws {
        let directory = (credentialPath as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let temporary = credentialPath + ".new"
        guard FileManager.default.createFile(atPath: temporary, contents: Data((credential + "\n").utf8), attributes: [.posixPermissions: 0o600])
        else { throw POSIXError(.EACCES) }
        guard rename(temporary, credentialPath) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }
}

/// What the agent tells the coordinator about itself.
public enum AgentInfo {
    public static let version = "0.1.0"

    static func hostFacts() -> [String: String] {
        var facts: [String: String] = ["cpus": "\(ProcessInfo.processInfo.activeProcessorCount)"]
        var name = utsname()
        if uname(&name) == 0 {
            func text(_ field: Any) -> String {
                withUnsafeBytes(of: field) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            }
            facts["hostname"] = text(name.nodename)
            facts["kernel"] = text(name.release)
            facts["arch"] = text(name.machine)
        }
        if let release = FileManager.default.contents(atPath: "/etc/os-release").map({ String(decoding: $0, as: UTF8.self) }) {
            for line in release.split(separator: "\n") where line.hasPrefix("PRETTY_NAME=") {
                facts["os"] = String(line.dropFirst("PRETTY_NAME=".count)).trimmingCharacters(in: ["\""])
            }
        }
        return facts
    }
}
