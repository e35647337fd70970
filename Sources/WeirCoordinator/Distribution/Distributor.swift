import Foundation
import Logging
import WeirCoordinatorProtocol

/// One agent's open WebSocket on this instance.
struct AgentConnection: Sendable {
    let agentID: String
    /// Tells this connection apart from the same agent's next one.
    let number: Int
    let send: @Sendable (CoordinatorMessage) async throws -> Void
    let close: @Sendable (_ reason: String) async -> Void
}

/// Keeps every connected agent on its desired bundle. After any change to the desired state (made here, or
/// announced by another instance) each connected agent's bundle is rendered again and sent to those whose
/// version moved; an agent that refused a version (NACK) is not sent that version again.
actor Distributor {
    private struct Session {
        var connection: AgentConnection
        var lastSent: String?
        var sentAt: ContinuousClock.Instant?
        var lastHeard: ContinuousClock.Instant
    }

    private let store: CoordinatorStore
    private let metrics: CoordinatorMetrics
    private let logger: Logger
    private var sessions: [String: Session] = [:]
    private var nextNumber = 0
    private var refreshRunning = false
    private var refreshAgain = false

    init(store: CoordinatorStore, metrics: CoordinatorMetrics, logger: Logger) {
        self.store = store
        self.metrics = metrics
        self.logger = logger
    }

    func makeNumber() -> Int {
        nextNumber += 1
        return nextNumber
    }

    /// The newest connection of an agent wins; an older one still open is closed.
    func register(_ connection: AgentConnection) async {
        let previous = sessions[connection.agentID]
        sessions[connection.agentID] = Session(connection: connection, lastHeard: .now)
        metrics.connectedAgents.set(to: Double(sessions.count))
        if let previous { await previous.connection.close("replaced by a newer connection of the same agent") }
        await refresh(agentIDs: [connection.agentID])
    }

    func unregister(_ connection: AgentConnection) {
        guard sessions[connection.agentID]?.connection.number == connection.number else { return }
        sessions[connection.agentID] = nil
        metrics.connectedAgents.set(to: Double(sessions.count))
    }

    func heard(from connection: AgentConnection) {
        guard sessions[connection.agentID]?.connection.number == connection.number else { return }
        sessions[connection.agentID]?.lastHeard = .now
    }

    func acknowledged(_ connection: AgentConnection, version: String) {
        metrics.acks.increment()
        guard let session = sessions[connection.agentID], session.connection.number == connection.number,
            session.lastSent == version, let sentAt = session.sentAt
        else { return }
        metrics.pushLatency.record(ContinuousClock.now - sentAt)
        sessions[connection.agentID]?.sentAt = nil
    }

    func refused(_ connection: AgentConnection, version: String) {
        metrics.nacks.increment()
        if sessions[connection.agentID]?.connection.number == connection.number { sessions[connection.agentID]?.sentAt = nil }
    }

    /// Something in the desired state changed: render again for every connected agent. Requests that arrive
    /// while a round runs fold into one more round.
    func desiredStateChanged() {
        if refreshRunning {
            refreshAgain = true
            return
        }
        refreshRunning = true
        Task { await self.refreshUntilSettled() }
    }

    private func refreshUntilSettled() async {
        repeat {
            refreshAgain = false
            await refresh(agentIDs: nil)
        } while refreshAgain
        refreshRunning = false
    }

    /// Closes connections not heard from within `silence` (the agent reconnects if it is alive).
    func closeSilent(olderThan silence: Duration) async {
        let now = ContinuousClock.now
        let silent = sessions.values.filter { now - $0.lastHeard > silence }
        for session in silent {
            sessions[session.connection.agentID] = nil
            await session.connection.close("no heartbeat for \(silence)")
        }
        metrics.connectedAgents.set(to: Double(sessions.count))
    }

    var connectedAgentIDs: Set<String> { Set(sessions.keys) }

    /// The agent's open connection on this instance.
    func connection(of agentID: String) -> AgentConnection? { sessions[agentID]?.connection }

    /// Renders bundles for the given connected agents (all when nil) and sends those that changed.
    private func refresh(agentIDs: Set<String>?) async {
        let targets = agentIDs.map { ids in sessions.keys.filter { ids.contains($0) } } ?? Array(sessions.keys)
        guard !targets.isEmpty else { return }
        let state: DesiredState
        let records: [String: AgentRecord]
        do {
            state = try await store.desiredState()
            if targets.count == 1, let id = targets.first {
                records = try await store.agent(id: id).map { [id: $0] } ?? [:]
            } else {
                records = Dictionary(try await store.agents().map { ($0.id, $0) }, uniquingKeysWith: { $1 })
            }
        } catch {
            logger.error("cannot read the desired state", metadata: ["error": "\(error)"])
            return
        }
        var sends: [(AgentConnection, ConfigBundle)] = []
        for id in targets {
            guard let session = sessions[id] else { continue }
            guard let record = records[id], !record.revoked else {
                sessions[id] = nil
                await session.connection.close("credential revoked or agent removed")
                continue
            }
            let bundle = state.bundle(for: record)
            if bundle.version == session.lastSent || bundle.version == record.nackedVersion { continue }
            if session.lastSent == nil, bundle.version == record.appliedVersion {
                // The agent already runs it (it said so in its hello); nothing to send.
                sessions[id]?.lastSent = bundle.version
                if record.desiredVersion != bundle.version { try? await store.recordPushed(agentID: id, version: bundle.version) }
                continue
            }
            sessions[id]?.lastSent = bundle.version
            sessions[id]?.sentAt = .now
            sends.append((session.connection, bundle))
        }
        guard !sends.isEmpty else { return }
        await withTaskGroup(of: Void.self) { group in
            for (connection, bundle) in sends {
                group.addTask { [store, metrics, logger] in
                    do {
                        try await store.recordPushed(agentID: connection.agentID, version: bundle.version)
                        try await connection.send(.bundle(bundle))
                        metrics.pushes.increment()
                        logger.info("bundle sent", metadata: ["agent": "\(connection.agentID)", "version": "\(bundle.version)"])
                    } catch {
                        logger.warning("bundle not sent", metadata: ["agent": "\(connection.agentID)", "error": "\(error)"])
                        await connection.close("send failed")
                    }
                }
            }
        }
    }
}
