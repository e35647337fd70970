import Foundation
import Logging
import NIOCore
import NIOSSL
import NIOWebSocket
import NIOConcurrencyHelpers
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
    let metrics: WeirMetrics
    /// `metrics.listen` as configured, announced in the hello for the coordinator's Prometheus discovery.
    let metricsAddress: String?
    let logger: Logger
    /// Kept across connections: growth while the coordinator was away is sent when it is back.
    let addressTraffic = ClientAddressTraffic()

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

    /// No connection, no refusal; no series at all without a coordinator.
    static func reset(_ metrics: WeirMetrics, configured: Bool) {
        metrics.coordinator.setConfigured(configured)
        metrics.health.set("coordinator", nil)
    }

    /// One connection, from dialing to closing. True when the coordinator welcomed the agent.
    private func connectOnce() async -> Bool {
        let welcomed = NIOLockedValueBox(false)
        defer { metrics.coordinator.setConnected(false) }
        do {
            var headers = [(AgentHeaders.agentID, agentID)]
            if let credential = readSecret(credentialPath) {
                headers.append(("Authorization", "Bearer \(credential)"))
            } else if let tokenFile = settings.tokenFile, let token = readSecret(tokenFile) {
                headers.append((AgentHeaders.enrollmentToken, token))
            } else {
                logger.error("no coordinator credential and no enrollment token", metadata: [
                    "credential_file": "\(credentialPath)", "token_file": "\(settings.tokenFile ?? "(not set)")",
                ])
                metrics.health.set("coordinator", "no credential and no enrollment token (\(credentialPath))")
                return false
            }
            var tls = TLSConfiguration.makeClientConfiguration()
            if let ca = settings.caFile { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
            try await CoordinatorSocket.connect(url: connectURL, headers: headers, tls: tls, maxMessageSize: 64 << 20) { messages, outbound in
                try await session(messages: messages, outbound: outbound, welcomed: welcomed)
            }
        } catch CoordinatorSocket.Failure.refused(let status, let reason) where !Task.isCancelled {
            // Said at every attempt, which backs off to one every 30 s: loud enough to be seen, not a flood.
            let refused = status == 401 || status == 403 || status == 409
            logger.error(refused ? "the coordinator refused this agent" : "the coordinator did not accept the connection", metadata: [
                "url": "\(connectURL)", "status": "\(status)", "reason": "\(reason)",
            ])
            metrics.coordinator.setRefused(refused)
            metrics.health.set("coordinator", "refused (HTTP \(status)): \(reason)")
        } catch let error as NIOSSLExtraError where error == .failedToValidateHostname {
            let host = (try? CoordinatorSocket.Endpoint(url: connectURL))?.host ?? connectURL
            logger.warning("coordinator connection failed", metadata: [
                "url": "\(connectURL)", "error": "the coordinator's certificate does not name \(host) (a DNS or IP subject alternative name)",
            ])
        } catch {
            if !Task.isCancelled { logger.warning("coordinator connection failed", metadata: ["url": "\(connectURL)", "error": "\(error)"]) }
        }
        return welcomed.withLockedValue { $0 }
    }

    private func session(messages: CoordinatorSocket.Messages, outbound: CoordinatorSocket.Outbound, welcomed: NIOLockedValueBox<Bool>) async throws {
        @Sendable func send(_ message: AgentMessage) async throws { try await outbound.send(try WireCoding.encode(message)) }
        guard let text = try await messages.next(), case .welcome(let welcome) = try WireCoding.decode(CoordinatorMessage.self, from: text) else {
            logger.error("the coordinator did not welcome the agent")
            return
        }
        if let credential = welcome.credential {
            try saveCredential(credential)
            logger.notice("enrolled with the coordinator; credential stored", metadata: ["file": "\(credentialPath)"])
        }
        welcomed.withLockedValue { $0 = true }
        metrics.coordinator.setConnected(true)
        metrics.coordinator.setRefused(false)
        metrics.health.set("coordinator", nil)
        try await send(.hello(AgentHello(
            agentID: agentID, version: AgentInfo.version, labels: settings.labels, facts: AgentInfo.hostFacts(),
            appliedVersion: await agent.appliedBundleVersion(), metricsAddress: metricsAddress)))
        logger.info("connected to the coordinator", metadata: ["url": "\(connectURL)"])

        let interval = Duration.milliseconds(Int64(max(welcome.heartbeatIntervalSeconds, 0.1) * 1000))
        // An agent that stops says goodbye, which also ends the inbound messages.
        try await withTaskCancellationHandler {
            try await exchange(messages: messages, send: send, interval: interval)
        } onCancel: {
            Task { await outbound.close(.goingAway, reason: "agent stopping") }
        }
    }

    private func exchange(
        messages: CoordinatorSocket.Messages, send: @escaping @Sendable (AgentMessage) async throws -> Void, interval: Duration
    ) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while true {
                    let (exposition, running) = await agent.heartbeatMetrics()
                    let addresses = addressTraffic.pending(exposition: exposition, running: running)
                    try await send(.heartbeat(AgentHeartbeat(
                        appliedVersion: await agent.appliedBundleVersion(), pipelines: PipelineReports.read(exposition: exposition, running: running),
                        addresses: addresses.growth.isEmpty ? nil : addresses.growth)))
                    addresses.commit()
                    try await Task.sleep(for: interval)
                }
            }
            while let text = try await messages.next() {
                guard let decoded = try? WireCoding.decode(CoordinatorMessage.self, from: text) else {
                    logger.warning("ignoring a message from the coordinator that is not understood")
                    continue
                }
                if case .dnsQueries(let request) = decoded {
                    try await send(.dnsQueries(Self.dnsQueries(request)))
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

    /// The newest answers of this agent's dns.filter rings that match, merged across pipelines.
    static func dnsQueries(_ request: DNSQueriesRequest, logs: DNSQueryLogs = .shared) -> DNSQueriesResponse {
        let pipelines = logs.pipelines
        if let pipeline = request.pipeline, !pipelines.contains(pipeline) {
            return DNSQueriesResponse(
                id: request.id, entries: [], pipelines: pipelines, error: "pipeline \"\(pipeline)\" has no dns.filter stage keeping a query log ring on this agent")
        }
        let filter = DNSQueryFilter(search: request.search, result: request.result, limit: max(0, min(request.limit, maxDNSQueries)))
        var found: [(pipeline: String, event: DNSQueryEvent)] = []
        for pipeline in request.pipeline.map({ [$0] }) ?? pipelines {
            found += (logs.ring(of: pipeline)?.events(filter) ?? []).map { (pipeline, $0) }
        }
        let newest = found.sorted { $0.event.time > $1.event.time }.prefix(filter.limit)
        return DNSQueriesResponse(id: request.id, entries: newest.map { pipeline, event in
            DNSQueryEntry(
                time: event.timeText, pipeline: pipeline, client: event.clientText, name: event.name, type: event.typeText, result: event.result,
                rule: event.rule, upstream: event.upstream, ms: event.milliseconds)
        }, pipelines: pipelines)
    }

    /// Entries one answer may hold (a few MB of JSON at most).
    static let maxDNSQueries = 10_000

    private func readSecret(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? nil : text
    }

    /// Written to a temporary file and renamed, readable by the agent's user only.
    private func saveCredential(_ credential: String) throws {
        let directory = (credentialPath as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try PrivateFile.write(Array((credential + "\n").utf8), to: credentialPath)
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
