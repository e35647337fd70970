import Foundation
import Hummingbird
import WeirCore

/// Named lists on the console: the egress gateway's "add or remove a domain on a web page". Changes go
/// through the API's own list operations (same validation — the private-address rule, each kind's checks —
/// same refusal while a document uses a list, same push to agents); each is audited with what it added or
/// removed. Everyone may read; operators and admins change.
extension Console {
    static let listPageSize = 500

    func registerLists(on router: Router<CoordinatorContext>) {
        router.get("lists") { _, _ -> Response in try await listsPage() }
        router.post("lists/create") { request, context -> Response in
            if let refused = await require(.operator, "change lists", context: context) { return refused }
            var request = request
            let form = try await FormBody.read(&request)
            let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces)
            guard let kind = NamedListKind(rawValue: form["kind"] ?? "") else { return try await listsPage(error: "Choose a kind.") }
            if try await api.store.list(name: name) != nil { return try await listsPage(error: "A list named \(name) exists already.") }
            do {
                try await audited("list.create \(name)", context) { _ = try await api.putList(name: name, kind: kind, entries: []) }
            } catch let error as APIError {
                return try await listsPage(error: error.message)
            }
            return Self.redirect("/lists/\(name)")
        }
        router.get("lists/{name}") { request, context -> Response in
            try await listPage(try context.parameters.require("name"), query: request.uri.queryParameters.get("q") ?? "")
        }
        router.post("lists/{name}/add") { request, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change lists", context: context) { return refused }
            var request = request
            let form = try await FormBody.read(&request)
            guard let list = try await api.store.list(name: name) else { throw HTTPError(.notFound) }
            let entries = Self.entries(
                from: form["entries"] ?? "", kind: list.kind, protected: form["protected"] != nil, allowPrivate: form["allow_private"] != nil)
            guard !entries.isEmpty else { return try await listPage(name, error: "Nothing to add: write one entry per line.") }
            return try await changingList(name, "list.add \(name)", context) {
                _ = try await api.changeList(name: name, add: entries, remove: [])
                return "Added \(entries.count == 1 ? entries[0].key : "\(entries.count) entries") (entries already there are kept once)."
            }
        }
        router.post("lists/{name}/remove") { request, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change lists", context: context) { return refused }
            var request = request
            let key = try await FormBody.read(&request)["key"] ?? ""
            return try await changingList(name, "list.remove \(name)", context) {
                _ = try await api.changeList(name: name, add: [], remove: [key])
                return "Removed \(key)."
            }
        }
        router.post("lists/{name}/delete") { _, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change lists", context: context) { return refused }
            do {
                try await audited("list.delete \(name)", context) { try await api.deleteList(name: name) }
            } catch let error as APIError {
                return try await listPage(name, error: error.message, details: error.details)
            }
            return Self.redirect("/lists")
        }
    }

    /// Runs a change with an audit note, and records it (ok with the note, or failed with the refusal).
    func audited(_ action: String, _ context: CoordinatorContext, _ change: () async throws -> Void) async throws {
        let note = AuditNote()
        let actor = ConsoleUser.current?.actor ?? "?"
        do {
            try await AuditNote.$current.withValue(note) { try await change() }
            await audit.record(actor: actor, source: context.clientAddress, action: action, outcome: "ok", detail: note.value)
        } catch let error as APIError {
            await audit.record(
                actor: actor, source: context.clientAddress, action: action, outcome: "failed",
                detail: ([error.message] + error.details).joined(separator: "; "))
            throw error
        }
    }

    private func changingList(_ name: String, _ action: String, _ context: CoordinatorContext, _ change: () async throws -> String) async throws -> Response {
        var message = ""
        do {
            try await audited(action, context) { message = try await change() }
        } catch let error as APIError {
            return try await listPage(name, error: error.message, details: error.details)
        }
        return try await listPage(name, message: message)
    }

    /// Lines of the bulk field as entries of `kind`; for destinations with flags, each as an address or a
    /// domain entry with them.
    static func entries(from text: String, kind: NamedListKind, protected: Bool, allowPrivate: Bool) -> [ListEntry] {
        let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty && !$0.hasPrefix("#") }
        return lines.map { line in
            guard kind == .destinations, protected || allowPrivate else { return .plain(line) }
            let isAddress = (try? IPNetwork.parse(line)) != nil
            return .detailed(.init(
                address: isAddress ? line : nil, domain: isAddress ? nil : line, protected: protected ? true : nil, allowPrivate: allowPrivate ? true : nil))
        }
    }

    private func listsPage(error: String? = nil) async throws -> Response {
        let formatter = ISO8601DateFormatter()
        var values: [String: Any] = [
            "listsPage": true, "csrf": ConsoleUser.current?.session.csrf ?? "", "canChange": userCanChange,
            "lists": try await api.store.lists().sorted { $0.name < $1.name }.map { list -> [String: Any] in
                [
                    "name": list.name, "kind": list.kind.rawValue, "count": list.entries.count,
                    "updated": formatter.string(from: Date(timeIntervalSince1970: list.updatedAt)),
                ]
            },
        ]
        if let error { values["error"] = error }
        return page("lists", title: "Lists", values, status: error == nil ? .ok : .unprocessableContent)
    }

    private func listPage(_ name: String, query: String = "", message: String? = nil, error: String? = nil, details: [String] = []) async throws -> Response {
        guard let list = try await api.store.list(name: name) else { return errorPage(.notFound, "There is no list named \(name).") }
        let needle = query.lowercased()
        let matching = list.entries.filter { needle.isEmpty || $0.key.lowercased().contains(needle) }
        let csrf = ConsoleUser.current?.session.csrf ?? ""
        let change = userCanChange
        var values: [String: Any] = [
            "listsPage": true, "name": list.name, "kind": list.kind.rawValue, "count": list.entries.count, "query": query, "searching": !query.isEmpty, "csrf": csrf,
            "canChange": change, "destinations": list.kind == .destinations,
            "placeholder": list.kind == .destinations ? "api.example.com\n203.0.113.0/24" : list.kind == .dnsRules ? "||ads.example^\n@@||good.example^" : "10.0.0.5 app.internal",
            "emptyText": list.entries.isEmpty ? "This list is empty. Add entries below." : "No entry contains \"\(query)\".",
            "entries": matching.prefix(Self.listPageSize).map { entry -> [String: Any] in
                var flags: [String] = []
                var text = entry.key
                if case .detailed(let detailed) = entry {
                    if detailed.protected == true { flags.append("protected") }
                    if detailed.allowPrivate == true { flags.append("private allowed") }
                    if let addresses = detailed.addresses { text += " → " + addresses.joined(separator: ", ") }
                    if let alias = detailed.alias { text += " → " + alias }
                }
                return ["key": entry.key, "text": text, "flags": flags.joined(separator: ", "), "name": list.name, "csrf": csrf, "canChange": change]
            },
        ]
        if matching.count > Self.listPageSize { values["more"] = "\(matching.count - Self.listPageSize) more match; search to narrow them." }
        if let message { values["message"] = message }
        if let error {
            values["error"] = error
            values["details"] = details
            values["hasDetails"] = !details.isEmpty
        }
        return page("list", title: "List \(list.name)", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
