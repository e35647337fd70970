import Foundation
import WeirCore

/// The changes the REST API and the web console both make — documents, assignments, agents, named lists —
/// written once: the same validation, the same refusals, the same push to agents, and a note of what changed
/// for the audit trail (`AuditNote`), whoever recorded the entry.
extension CoordinatorAPI {
    // MARK: - Documents and assignments

    /// Validates and stores a document; true when it was created.
    func putPipeline(name: String, document: String) async throws -> Bool {
        guard ConfigLoader.isValidName(name) else { throw APIError.badRequest("a pipeline document name is 1-64 letters, digits, '-' or '_'") }
        try validate(document: document, name: name, lists: try await store.lists())
        let previous = try await store.pipeline(name: name)
        try await store.putPipeline(name: name, document: document)
        let redaction = SecretRedaction(registry: registry)
        AuditNote.set(AuditDiff.document(before: previous.map { redaction.redact($0.document) }, after: redaction.redact(document)))
        await changed()
        return previous == nil
    }

    func deletePipeline(name: String) async throws {
        let previous = try await store.pipeline(name: name)
        guard try await store.deletePipeline(name: name) else { throw APIError.notFound("pipeline document \"\(name)\"") }
        AuditNote.set(AuditDiff.document(before: previous.map { SecretRedaction(registry: registry).redact($0.document) }, after: nil))
        await changed()
    }

    func createAssignment(pipeline: String, agent: String?, selector text: String?) async throws -> Assignment {
        guard try await store.pipeline(name: pipeline) != nil else { throw APIError.notFound("pipeline document \"\(pipeline)\"") }
        let selector = try text.map { try LabelSelector(parsing: $0) }
        guard (agent == nil) != (selector == nil) else { throw APIError.badRequest("give exactly one of agent and selector") }
        if let agent, !Identifiers.isValidAgentID(agent) { throw APIError.badRequest("\"\(agent)\" is not an agent id") }
        let assignment = try await store.createAssignment(pipeline: pipeline, agent: agent, selector: selector)
        AuditNote.set("\(pipeline) → " + (agent.map { "agent \($0)" } ?? "selector \(selector!.description)"))
        await changed()
        return assignment
    }

    func deleteAssignment(id: String) async throws {
        let existing = try await store.assignments().first { $0.id == id }
        guard try await store.deleteAssignment(id: id) else { throw APIError.notFound("assignment \"\(id)\"") }
        if let existing { AuditNote.set("\(existing.pipeline) → " + (existing.agent.map { "agent \($0)" } ?? "selector \(existing.selector?.description ?? "")")) }
        await changed()
    }

    // MARK: - Agents

    func revokeAgent(_ id: String) async throws {
        guard try await store.revoke(agentID: id) else { throw APIError.notFound("agent \"\(id)\"") }
        AuditNote.set("credential revoked; its connection is closed")
        await changed()
    }

    /// Replaces the operator labels (merged over enrollment and announced ones).
    func setLabels(agentID id: String, _ labels: [String: String]) async throws {
        try Self.checkLabels(labels)
        guard let before = try await store.agent(id: id) else { throw APIError.notFound("agent \"\(id)\"") }
        _ = try await store.setOperatorLabels(agentID: id, labels)
        func text(_ labels: [String: String]) -> String { labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") }
        AuditNote.set("operator labels: {\(text(before.operatorLabels))} → {\(text(labels))}")
        await changed()
    }

    // MARK: - Relays

    /// Both sides rendered with a new key and checked by the agent's validator, as agents will load them.
    func createRelay(_ body: RelayRequest) async throws -> Relay {
        guard ConfigLoader.isValidName(body.name), body.name.count <= 58 else {
            throw APIError.badRequest("a relay name is 1-58 letters, digits, '-' or '_'")
        }
        let selector = try body.entry.selector.map { try LabelSelector(parsing: $0) }
        guard (body.entry.agent == nil) != (selector == nil) else { throw APIError.badRequest("entry: give exactly one of agent and selector") }
        for agent in [body.entry.agent, body.exit.agent].compactMap({ $0 }) where !Identifiers.isValidAgentID(agent) {
            throw APIError.badRequest("\"\(agent)\" is not an agent id")
        }
        let cipher = body.cipher ?? Relay.ciphers[0]
        guard Relay.ciphers.contains(cipher) else { throw APIError.badRequest("cipher must be one of \(Relay.ciphers.joined(separator: ", "))") }
        let relay = Relay(
            name: body.name, entry: .init(agent: body.entry.agent, selector: selector), exit: body.exit, listen: body.listen,
            target: body.target, cipher: cipher, key: Secrets.make(prefix: ""), createdAt: Date().timeIntervalSince1970)
        try validate(document: relay.entryDocument, name: relay.entryDocumentName, lists: [])
        try validate(document: relay.exitDocument, name: relay.exitDocumentName, lists: [])
        guard try await store.createRelay(relay) else { throw APIError(status: .conflict, message: "relay \"\(relay.name)\" exists") }
        AuditNote.set(relay.summary)
        await changed()
        return relay
    }

    func deleteRelay(name: String) async throws {
        let relay = try await store.relays().first { $0.name == name }
        guard try await store.deleteRelay(name: name) else { throw APIError.notFound("relay \"\(name)\"") }
        if let relay { AuditNote.set("deleted: " + relay.summary) }
        await changed()
    }

    // MARK: - Named lists

    /// Creates or replaces a list (its kind kept when not given); true when it was created.
    func putList(name: String, kind: NamedListKind?, entries: [ListEntry]) async throws -> Bool {
        guard ConfigLoader.isValidName(name) else { throw APIError.badRequest("a list name is 1-64 letters, digits, '-' or '_'") }
        let existing = try await store.list(name: name)
        let kind = kind ?? existing?.kind ?? .destinations
        if let existing, existing.kind != kind {
            // Documents using the list take one kind: refused like a deletion while one does.
            var changed = try await store.lists().filter { $0.name != name }
            changed.append(NamedList(name: name, kind: kind, entries: entries, updatedAt: 0))
            try await checkDocuments(against: changed, conflict: "list \"\(name)\" cannot become \(kind.rawValue): it is used by")
        }
        try await replaceList(name: name, kind: kind, entries: entries, before: existing)
        return existing == nil
    }

    /// Adds entries (those not present) and removes entries by key.
    func changeList(name: String, add: [ListEntry], remove: [String]) async throws -> NamedList {
        guard let list = try await store.list(name: name) else { throw APIError.notFound("list \"\(name)\"") }
        let removed = Set(remove)
        var entries = list.entries.filter { !removed.contains($0.key) }
        var present = Set(entries.map(\.key))
        for entry in add where !present.contains(entry.key) {
            entries.append(entry)
            present.insert(entry.key)
        }
        try await replaceList(name: name, kind: list.kind, entries: entries, before: list)
        guard let changed = try await store.list(name: name) else { throw APIError.notFound("list \"\(name)\"") }
        return changed
    }

    /// Refused while a document uses the list: agents would refuse their next bundle.
    func deleteList(name: String) async throws {
        var remaining = try await store.lists()
        guard let list = remaining.first(where: { $0.name == name }) else { throw APIError.notFound("list \"\(name)\"") }
        remaining.removeAll { $0.name == name }
        try await checkDocuments(against: remaining, conflict: "list \"\(name)\" is used by")
        _ = try await store.deleteList(name: name)
        AuditNote.set("deleted (\(list.kind.rawValue), \(list.entries.count) entries): " + AuditDiff.entries(before: list.entries.map(\.key), after: []))
        await changed()
    }

    private func replaceList(name: String, kind: NamedListKind, entries: [ListEntry], before: NamedList?) async throws {
        try validate(list: NamedList(name: name, kind: kind, entries: entries, updatedAt: 0))
        try await store.putList(name: name, kind: kind, entries: entries)
        var note = AuditDiff.entries(before: before?.entries.map(\.key) ?? [], after: entries.map(\.key))
        if before == nil { note = "created (\(kind.rawValue)): " + note } else if before?.kind != kind { note = "kind \(before!.kind.rawValue) → \(kind.rawValue); " + note }
        AuditNote.set(note)
        await changed()
    }
}
