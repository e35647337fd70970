import Foundation
import Hummingbird

/// One agent: its state, bundle, pipelines with their health and counters, labels (editable by operators),
/// host facts, and revocation — through the API's own agent operations, audited.
extension Console {
    func registerAgent(on router: Router<CoordinatorContext>) {
        router.get("agents/{id}") { request, context -> Response in
            try await agentPage(try context.parameters.require("id"), range: request.uri.queryParameters.get("range"))
        }
        router.post("agents/{id}/labels") { request, context -> Response in
            let id = try context.parameters.require("id")
            if let refused = await require(.operator, "change agents", context: context) { return refused }
            var request = request
            let text = try await FormBody.read(&request)["labels"] ?? ""
            var labels: [String: String] = [:]
            for line in text.split(whereSeparator: \.isNewline).map({ $0.trimmingCharacters(in: .whitespaces) }) where !line.isEmpty {
                let parts = line.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard parts.count == 2 else { return try await agentPage(id, error: "\"\(line)\" is not key=value.") }
                labels[parts[0]] = parts[1]
            }
            do {
                try await audited("agent.labels \(id)", context) { try await api.setLabels(agentID: id, labels) }
            } catch let error as APIError {
                return try await agentPage(id, error: error.message)
            }
            return try await agentPage(id, message: "Labels saved; documents assigned by label follow.")
        }
        router.post("agents/{id}/revoke") { _, context -> Response in
            let id = try context.parameters.require("id")
            if let refused = await require(.operator, "change agents", context: context) { return refused }
            do {
                try await audited("agent.revoke \(id)", context) { try await api.revokeAgent(id) }
            } catch let error as APIError {
                return try await agentPage(id, error: error.message)
            }
            return try await agentPage(id, message: "Revoked.")
        }
    }

    private func agentPage(_ id: String, range: String? = nil, message: String? = nil, error: String? = nil) async throws -> Response {
        guard let agent = try? await api.agentView(id), let record = try await api.store.agent(id: id) else {
            return errorPage(.notFound, "There is no agent \(id).")
        }
        let formatter = ISO8601DateFormatter()
        func text(_ labels: [String: String]) -> String {
            labels.isEmpty ? "none" : labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ", ")
        }
        // The traffic chart's range (the Traffic page's ranges), and each pipeline's own chart there.
        let chosen = TrafficQuery.ranges.first { $0.name == range } ?? TrafficQuery.ranges[0]
        func query(_ pipeline: String? = nil) -> String {
            var components = URLComponents()
            components.queryItems = [URLQueryItem(name: "range", value: chosen.name), URLQueryItem(name: "agent", value: agent.id)]
                + (pipeline.map { [URLQueryItem(name: "pipeline", value: $0)] } ?? [])
            return components.percentEncodedQuery ?? ""
        }
        var values: [String: Any] = [
            "chartQuery": query(), "rangeLabel": chosen.label,
            "ranges": TrafficQuery.ranges.map { ["value": $0.name, "label": $0.label, "selected": $0.name == chosen.name] },
            "id": agent.id, "state": agent.revoked ? "revoked" : agent.online ? "online" : "offline", "revoked": agent.revoked,
            "seen": Self.age(Date().timeIntervalSince1970 - agent.lastSeen), "version": agent.version.isEmpty ? "unknown" : agent.version,
            "enrolled": formatter.string(from: Date(timeIntervalSince1970: agent.enrolledAt)),
            "desired": Self.shortVersion(agent.desiredVersion), "applied": Self.shortVersion(agent.appliedVersion),
            "bundle": agent.status, "bundleText": agent.status == "in_sync" ? "in sync" : agent.status,
            "nacked": Self.shortVersion(agent.nackedVersion),
            "pipelines": agent.pipelines.sorted { $0.key < $1.key }.map { name, report -> [String: Any] in
                [
                    "name": name, "chart": query(name), "health": report.health, "in": Self.bytes(report.bytesIn), "out": Self.bytes(report.bytesOut),
                    "active": Int(report.connectionsActive), "total": Int(report.connectionsTotal), "errors": Int(report.errorsTotal),
                ]
            },
            "labels": agent.labels.sorted { $0.key < $1.key }.map { ["text": "\($0.key)=\($0.value)"] },
            "enrollmentLabels": text(record.enrollmentLabels), "announcedLabels": text(record.announcedLabels),
            "operatorLabels": text(record.operatorLabels),
            "operatorLabelLines": record.operatorLabels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "\n"),
            "facts": agent.facts.sorted { $0.key < $1.key }.map { ["key": $0.key, "value": $0.value] },
            "canChange": userCanChange, "csrf": ConsoleUser.current?.session.csrf ?? "",
        ]
        if let lastError = agent.lastError { values["lastError"] = lastError }
        if let message { values["message"] = message }
        if let error { values["error"] = error }
        return page("agent", title: "Agent \(id)", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
