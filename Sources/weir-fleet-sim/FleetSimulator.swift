import ArgumentParser
import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOSSL
import Synchronization
import WeirCoordinatorProtocol

/// Simulated agents for the coordinator benchmark: each speaks the agent protocol over its own wss
/// connection (enrolls, says hello, sends heartbeats, ACKs every bundle at once) but runs nothing.
@main
struct FleetSimulator: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "weir-fleet-sim",
        abstract: "Connect N simulated agents to a coordinator; report when all of them have ACKed a new bundle version.")

    @Option(help: "Coordinator agent URL, e.g. wss://localhost:8443.") var url: String
    @Option(help: "CA certificate of the coordinator.") var ca: String
    @Option(help: "File holding an enrollment token with enough uses.") var tokenFile: String
    @Option(help: "How many agents.") var agents: Int = 1000
    @Option(help: "Agent id prefix.") var prefix: String = "sim-"
    @Option(help: "Connections opened at a time while ramping up.") var batch: Int = 100

    func run() async throws {
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
        var logger = Logger(label: "weir-fleet-sim")
        logger.logLevel = .warning
        let fleet = FleetState(size: agents)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<agents {
                let agent = SimulatedAgent(id: "\(prefix)\(index)", url: url, token: token, tls: tls, fleet: fleet, logger: logger)
                group.addTask { await agent.run() }
                if (index + 1) % batch == 0 { try await fleet.waitConnected(index + 1) }
            }
            try await fleet.waitConnected(agents)
            report("connected \(agents) at \(String(format: "%.3f", Date().timeIntervalSince1970))")
            try await group.waitForAll()
        }
    }
}

/// What the simulated fleet has done, for the reports.
final class FleetState: Sendable {
    private struct State {
        var connected = 0
        /// version -> (agents that ACKed it, when the last did)
        var acks: [String: (count: Int, last: Double)] = [:]
    }

    let size: Int
    private let state = Mutex(State())

    init(size: Int) { self.size = size }

    func connected() {
        state.withLock { $0.connected += 1 }
    }

    func waitConnected(_ count: Int) async throws {
        while state.withLock({ $0.connected }) < count { try await Task.sleep(for: .milliseconds(20)) }
    }

    func acked(_ version: String) {
        let now = Date().timeIntervalSince1970
        let complete: Bool = state.withLock { state in
            var entry = state.acks[version] ?? (0, 0)
            entry.count += 1
            entry.last = now
            state.acks[version] = entry
            return entry.count == size
        }
        if complete {
            report("acked \(version) by \(size) at \(String(format: "%.3f", now))")
        }
    }
}

struct SimulatedAgent: Sendable {
    let id: String
    let url: String
    let token: String
    let tls: TLSConfiguration
    let fleet: FleetState
    let logger: Logger

    func run() async {
        var credential: String?
        let counted = Mutex(false)
        while !Task.isCancelled {
            var headers = HTTPFields()
            headers[HTTPField.Name(AgentHeaders.agentID)!] = id
            if let credential { headers[.authorization] = "Bearer \(credential)" } else { headers[HTTPField.Name(AgentHeaders.enrollmentToken)!] = token }
            let received = Mutex<String?>(nil)
            do {
                try await WebSocketClient.connect(
                    url: url + agentConnectPath, configuration: .init(maxFrameSize: 64 << 20, additionalHeaders: headers), tlsConfiguration: tls,
                    logger: logger
                ) { inbound, outbound, _ in
                    @Sendable func send(_ message: AgentMessage) async throws { try await outbound.writeTextMessage(try WireCoding.encode(message)) }
                    var messages = inbound.messages(maxSize: 64 << 20).makeAsyncIterator()
                    guard case .text(let text)? = try await messages.next(),
                        case .welcome(let welcome) = try WireCoding.decode(CoordinatorMessage.self, from: text)
                    else { return }
                    if let issued = welcome.credential { received.withLock { $0 = issued } }
                    try await send(.hello(AgentHello(agentID: id, version: "sim", labels: ["role": "sim"], facts: [:], appliedVersion: nil)))
                    if !counted.withLock({ let was = $0; $0 = true; return was }) { fleet.connected() }
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            while true {
                                try await Task.sleep(for: .milliseconds(Int64(welcome.heartbeatIntervalSeconds * 1000)))
                                try await send(.heartbeat(AgentHeartbeat(appliedVersion: nil, pipelines: [:])))
                            }
                        }
                        while let message = try await messages.next() {
                            guard case .text(let text) = message, case .bundle(let bundle) = try WireCoding.decode(CoordinatorMessage.self, from: text)
                            else { continue }
                            try await send(.ack(version: bundle.version))
                            fleet.acked(bundle.version)
                        }
                        group.cancelAll()
                    }
                }
            } catch {
                logger.warning("simulated agent connection failed", metadata: ["agent": "\(id)", "error": "\(error)"])
            }
            if let issued = received.withLock({ $0 }) { credential = issued }
            try? await Task.sleep(for: .milliseconds(500))
        }
    }
}

/// One line on standard output, written at once (the benchmark script reads it as it comes).
func report(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
