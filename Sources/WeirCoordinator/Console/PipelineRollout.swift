import Foundation
import Hummingbird

/// Where a document goes: the agents its assignments reach now, each with its bundle's state (pending until
/// the agent ACKs the version it should run, refused with the agent's error on a NACK), live on the document
/// page; and before a save, a preview of the agents a change reaches and what changes in their bundles.
extension Console {
    /// At most this many agents are listed by name (the counts cover all).
    static let rolloutRows = 100

    struct Rollout {
        /// The rows' values (for the page's first render) and the rows rendered (for the live stream).
        var agents: [[String: Any]]
        var rows: String
        var summary: String
    }

    /// The agents `name` reaches (its own assignments, and a relay's or VPN server's rendered ones).
    func reachedAgents(_ name: String, state: DesiredState) async throws -> [AgentRecord] {
        Self.reached(name, state: state, agents: try await api.store.agents())
    }

    static func reached(_ name: String, state: DesiredState, agents: [AgentRecord]) -> [AgentRecord] {
        let assignments = state.assignments.filter { $0.pipeline == name }
        guard !assignments.isEmpty else { return [] }
        return agents.filter { agent in assignments.contains { $0.applies(to: agent) } }
    }

    /// The desired state, the agents and their views, read once for pages that show several rollouts.
    struct FleetSnapshot {
        let state: DesiredState
        let agents: [AgentRecord]
        let views: [String: AgentView]

        /// The views of the agents `name` reaches.
        func reached(_ name: String) -> [AgentView] {
            Console.reached(name, state: state, agents: agents).compactMap { views[$0.id] }
        }

        /// "2 agents: 2 applied · 0 pending · 0 refused".
        func counts(_ name: String) -> String { Console.counts(reached(name)) }
    }

    func snapshot() async throws -> FleetSnapshot {
        let state = try await api.store.desiredState()
        let agents = try await api.store.agents()
        let views = try await api.agentViews()
        return FleetSnapshot(state: state, agents: agents, views: Dictionary(views.map { ($0.id, $0) }, uniquingKeysWith: { $1 }))
    }

    static func counts(_ agents: [AgentView]) -> String {
        let count = { (status: String) in agents.count { $0.status == status } }
        return agents.isEmpty
            ? "Reaches no agent: assign it to an agent or a label selector."
            : "\(agents.count) agent\(agents.count == 1 ? "" : "s"): \(count("in_sync")) applied · \(count("pending")) pending · \(count("refused")) refused"
    }

    func rollout(_ name: String) async throws -> Rollout {
        let agents = try await snapshot().reached(name)
        // Refusals first, then what is still on its way: what an operator watching a push looks for.
        let order = ["refused": 0, "pending": 1, "in_sync": 2]
        let sorted = agents.sorted { (order[$0.status] ?? 3, $0.id) < (order[$1.status] ?? 3, $1.id) }
        let now = Date().timeIntervalSince1970
        let rows: [[String: Any]] = sorted.prefix(Self.rolloutRows).map { agent in
            let state = agent.revoked ? "revoked" : agent.online ? "online" : "offline"
            var text = agent.status == "in_sync" ? "applied (ACK)" : agent.status == "refused" ? "refused (NACK)" : "pending"
            if agent.status == "pending", !agent.online { text = "pending — offline, gets it when it connects" }
            return [
                "id": agent.id, "state": state, "seen": "last seen " + Self.age(now - agent.lastSeen), "bundle": agent.status, "bundleText": text,
                "desired": Self.shortVersion(agent.desiredVersion), "applied": Self.shortVersion(agent.appliedVersion),
                "error": agent.status == "refused" ? agent.lastError ?? "" : "",
            ]
        }
        var summary = Self.counts(agents)
        if agents.count > Self.rolloutRows { summary += " (refusals and pending ones listed first; \(agents.count - Self.rolloutRows) more not listed)" }
        return Rollout(agents: rows, rows: templates.render("rollout_rows", ["agents": rows]), summary: summary)
    }

    /// What saving `draft` as `name` would change: which agents' bundles, and the document's diff (the one
    /// file that changes in each of them). Secrets stay as they are: only operators and admins preview.
    func preview(_ name: String, draft: String) async throws -> [String: Any] {
        let stored = try await api.store.pipeline(name: name)
        let diff = LineDiff(old: stored?.document ?? "", new: draft)
        var state = try await api.store.desiredState()
        let reached = try await reachedAgents(name, state: state)
        let before = Dictionary(uniqueKeysWithValues: reached.map { ($0.id, state.bundle(for: $0).version) })
        state.documents[name] = PipelineDocument(name: name, document: draft, updatedAt: Date().timeIntervalSince1970)
        let changes = reached.compactMap { agent -> [String: Any]? in
            let after = state.bundle(for: agent).version
            guard after != before[agent.id] else { return nil }
            return ["id": agent.id, "before": Self.shortVersion(before[agent.id]), "after": Self.shortVersion(after)]
        }
        var reach: String
        if stored == nil {
            reach = "A new document: it reaches no agent until you assign it."
        } else if diff.isEmpty {
            reach = "No change: the document is the same as the saved one."
        } else if reached.isEmpty {
            reach = "Not assigned: saving it changes no agent's bundle."
        } else {
            reach = "Saving changes the bundle of \(changes.count) agent\(changes.count == 1 ? "" : "s"): pipelines/\(name).yaml in each, as below."
        }
        return [
            "reach": reach, "changes": Array(changes.prefix(Self.rolloutRows)), "hasChanges": !changes.isEmpty,
            "moreChanges": changes.count > Self.rolloutRows ? "and \(changes.count - Self.rolloutRows) more agents" : "",
            "diffSummary": "\(diff.removed) line\(diff.removed == 1 ? "" : "s") removed, \(diff.added) added",
            "diff": diff.lines.map { line -> [String: Any] in
                ["kind": line.kind.rawValue, "text": line.text, "old": line.old.map(String.init) ?? "", "new": line.new.map(String.init) ?? ""]
            },
        ]
    }
}
