import Foundation
import Hummingbird

/// Relays on the console: public → entry agent(s) → encrypted → exit agent → target, made in one form
/// through the API's own relay operation (the same checks, both sides through the agent's validator, a new
/// key never shown), with where each side is in its rollout. Everyone reads; operators and admins change.
extension Console {
    func registerRelays(on router: Router<CoordinatorContext>) {
        router.get("relays") { _, _ -> Response in try await relaysPage() }
        router.post("relays/create") { request, context -> Response in
            if let refused = await require(.operator, "change relays", context: context) { return refused }
            var request = request
            let form = try await FormBody.read(&request)
            func field(_ name: String) -> String { (form[name] ?? "").trimmingCharacters(in: .whitespaces) }
            func optional(_ name: String) -> String? { field(name).isEmpty ? nil : field(name) }
            let body = RelayRequest(
                name: field("name"), entry: .init(agent: optional("entry_agent"), selector: optional("entry_selector")),
                exit: Relay.Exit(agent: field("exit_agent"), listen: field("exit_listen"), address: field("exit_address")),
                listen: field("listen"), target: field("target"), cipher: optional("cipher"))
            do {
                var relay: Relay?
                try await audited("relay.create \(body.name)", context) { relay = try await api.createRelay(body) }
                return try await relaysPage(message: "Relay \(relay?.name ?? body.name) created: its two sides reach their agents now.")
            } catch let error as APIError {
                return try await relaysPage(error: error.message, details: error.details.map { Diagnostic($0).text }, form: form)
            }
        }
        router.post("relays/{name}/delete") { _, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change relays", context: context) { return refused }
            do {
                try await audited("relay.delete \(name)", context) { try await api.deleteRelay(name: name) }
            } catch let error as APIError {
                return try await relaysPage(error: error.message)
            }
            return try await relaysPage(message: "Relay \(name) deleted: its agents stop both sides at their next bundle.")
        }
    }

    private func relaysPage(message: String? = nil, error: String? = nil, details: [String] = [], form: [String: String] = [:]) async throws -> Response {
        let fleet = try await snapshot()
        let canChange = userCanChange, csrf = ConsoleUser.current?.session.csrf ?? ""
        let formatter = ISO8601DateFormatter()
        var values: [String: Any] = [
            "relaysPage": true, "canChange": canChange, "csrf": csrf,
            "relays": try await api.store.relays().map { relay -> [String: Any] in
                [
                    "name": relay.name, "listen": relay.listen, "target": relay.target, "cipher": relay.cipher,
                    "entry": relay.entry.agent.map { "agent \($0)" } ?? "agents with \(relay.entry.selector?.description ?? "")",
                    "exitAgent": relay.exit.agent, "exitAddress": relay.exit.address, "exitListen": relay.exit.listen,
                    "entryState": fleet.counts(relay.entryDocumentName), "exitState": fleet.counts(relay.exitDocumentName),
                    "created": formatter.string(from: Date(timeIntervalSince1970: relay.createdAt)), "csrf": csrf, "canChange": canChange,
                ]
            },
            "ciphers": Relay.ciphers.map { ["name": $0, "selected": $0 == (form["cipher"] ?? Relay.ciphers[0])] },
            "agents": fleet.agents.prefix(1000).map(\.id),
        ]
        // A refused form comes back as it was typed.
        for key in ["name", "entry_agent", "entry_selector", "listen", "exit_agent", "exit_listen", "exit_address", "target"] {
            values["form_" + key] = form[key] ?? ""
        }
        if let message { values["message"] = message }
        if let error { values["error"] = error }
        if !details.isEmpty { values["details"] = details }
        return page("relays", title: "Relays", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
