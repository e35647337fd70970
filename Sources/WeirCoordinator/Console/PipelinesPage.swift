import Foundation
import Hummingbird
import NIOCore
import WeirCore

/// Pipeline documents on the console: an editor that the server validates as you type (the agents' own
/// validator, so the messages are those `weir validate` prints, with line and column), saving through the
/// API's own operation (refused with the same messages), and the document's assignments. Viewers read the
/// document with secrets redacted.
extension Console {
    static let starterDocument = """
        pipelines:
          NAME:
            stages:
              - type: listen.tcp
                address: 0.0.0.0:8080
              - type: connect.tcp
                addresses: [127.0.0.1:80]

        """

    /// A validator message with its place: `file:line:column: text`.
    struct Diagnostic {
        let line: Int
        let column: Int
        let text: String

        init(_ description: String) {
            if let match = description.firstMatch(of: /^[^:\n]+:(\d+):(\d+): (.*)$/) {
                line = Int(match.1) ?? 0
                column = Int(match.2) ?? 0
                text = String(match.3)
            } else {
                (line, column, text) = (0, 0, description)
            }
        }

        var values: [String: Any] { ["line": line, "column": column, "text": text] }
    }

    func registerPipelines(on router: Router<CoordinatorContext>) {
        router.get("pipelines") { request, _ -> Response in
            if let name = request.uri.queryParameters.get("new") {
                guard ConfigLoader.isValidName(name) else { return try await pipelinesPage(error: "A document name is 1-64 letters, digits, '-' or '_'.") }
                return Self.redirect("/pipelines/\(name)")
            }
            return try await pipelinesPage()
        }
        router.get("pipelines/{name}") { _, context -> Response in try await pipelinePage(try context.parameters.require("name")) }
        router.post("pipelines/{name}/validate") { request, context -> Response in
            let name = try context.parameters.require("name")
            guard userCanChange else { throw HTTPError(.forbidden) }
            let document = String(buffer: try await api.body(request))
            var messages: [Diagnostic] = []
            do { try api.validate(document: document, name: name, lists: try await api.store.lists()) } catch let error as APIError {
                messages = error.details.map(Diagnostic.init)
            }
            struct Message: Encodable { let line: Int, column: Int, text: String }
            struct Result: Encodable { let valid: Bool, messages: [Message] }
            return JSONResponse.make(Result(valid: messages.isEmpty, messages: messages.map { Message(line: $0.line, column: $0.column, text: $0.text) }))
        }
        router.post("pipelines/{name}/save") { request, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change pipeline documents", context: context) { return refused }
            var request = request
            let document = (try await FormBody.read(&request, limit: api.maxRequestBody)["document"] ?? "").replacingOccurrences(of: "\r\n", with: "\n")
            do {
                var created = false
                try await audited("pipeline.save \(name)", context) { created = try await api.putPipeline(name: name, document: document) }
                return try await pipelinePage(name, message: created ? "Saved. Assign it below so agents run it." : "Saved; the agents it is assigned to get it now.")
            } catch let error as APIError {
                return try await pipelinePage(name, draft: document, error: error.message, diagnostics: error.details.map(Diagnostic.init))
            }
        }
        router.post("pipelines/{name}/preview") { request, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change pipeline documents", context: context) { return refused }
            guard ConfigLoader.isValidName(name) else { return errorPage(.notFound, "\(name) is not a document name.") }
            var request = request
            let document = (try await FormBody.read(&request, limit: api.maxRequestBody)["document"] ?? "").replacingOccurrences(of: "\r\n", with: "\n")
            var diagnostics: [Diagnostic] = []
            do { try api.validate(document: document, name: name, lists: try await api.store.lists()) } catch let error as APIError {
                diagnostics = error.details.map(Diagnostic.init)
            }
            return try await pipelinePage(
                name, draft: document, error: diagnostics.isEmpty ? nil : "This draft is not valid: agents would refuse it. Saving is refused until it is fixed.",
                diagnostics: diagnostics, preview: try await preview(name, draft: document))
        }
        router.get("pipelines/{name}/events") { _, context -> Response in
            let name = try context.parameters.require("name")
            return try liveEvents("pipeline:" + name) {
                let rollout = try await rollout(name)
                return [("rows", rollout.rows), ("summary", rollout.summary)]
            }
        }
        router.post("pipelines/{name}/assign") { request, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change pipeline documents", context: context) { return refused }
            var request = request
            let form = try await FormBody.read(&request)
            let agent = (form["agent"] ?? "").trimmingCharacters(in: .whitespaces), selector = (form["selector"] ?? "").trimmingCharacters(in: .whitespaces)
            do {
                try await audited("assignment.create \(name)", context) {
                    _ = try await api.createAssignment(pipeline: name, agent: agent.isEmpty ? nil : agent, selector: selector.isEmpty ? nil : selector)
                }
            } catch let error as APIError {
                return try await pipelinePage(name, error: error.message)
            }
            return try await pipelinePage(name, message: "Assigned.")
        }
        router.post("pipelines/{name}/unassign") { request, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change pipeline documents", context: context) { return refused }
            var request = request
            let id = try await FormBody.read(&request)["id"] ?? ""
            do {
                try await audited("assignment.delete \(name)", context) { try await api.deleteAssignment(id: id) }
            } catch let error as APIError {
                return try await pipelinePage(name, error: error.message)
            }
            return try await pipelinePage(name, message: "Assignment removed.")
        }
        router.post("pipelines/{name}/delete") { _, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change pipeline documents", context: context) { return refused }
            do {
                try await audited("pipeline.delete \(name)", context) { try await api.deletePipeline(name: name) }
            } catch let error as APIError {
                return try await pipelinePage(name, error: error.message)
            }
            return Self.redirect("/pipelines")
        }
    }

    private func targets(_ assignment: Assignment) -> String {
        assignment.agent.map { "agent \($0)" } ?? "agents with \(assignment.selector?.description ?? "")"
    }

    private func pipelinesPage(error: String? = nil) async throws -> Response {
        let formatter = ISO8601DateFormatter()
        let assignments = try await api.store.assignments()
        var values: [String: Any] = [
            "pipelinesPage": true, "canChange": userCanChange,
            "documents": try await api.store.pipelines().sorted { $0.name < $1.name }.map { document -> [String: Any] in
                [
                    "name": document.name, "size": Self.bytes(Double(document.document.utf8.count)),
                    "updated": formatter.string(from: Date(timeIntervalSince1970: document.updatedAt)),
                    "targets": assignments.filter { $0.pipeline == document.name }.map(targets),
                ]
            },
        ]
        if let error { values["error"] = error }
        return page("pipelines", title: "Pipelines", values, status: error == nil ? .ok : .unprocessableContent)
    }

    private func pipelinePage(
        _ name: String, draft: String? = nil, message: String? = nil, error: String? = nil, diagnostics: [Diagnostic] = [],
        preview: [String: Any]? = nil
    ) async throws -> Response {
        guard ConfigLoader.isValidName(name) else { return errorPage(.notFound, "\(name) is not a document name.") }
        let stored = try await api.store.pipeline(name: name)
        let canChange = userCanChange
        let readsSecrets = ConsoleUser.current?.account.role.readsSecrets ?? false
        if stored == nil, !canChange { return errorPage(.notFound, "There is no document named \(name).") }
        var document = draft ?? stored?.document ?? Self.starterDocument.replacingOccurrences(of: "NAME", with: name)
        if !readsSecrets { document = SecretRedaction(registry: api.registry).redact(document) }
        let agents = try await api.store.agents()
        let csrf = ConsoleUser.current?.session.csrf ?? ""
        var values: [String: Any] = [
            "pipelinesPage": true, "name": name, "isNew": stored == nil, "document": document, "canChange": canChange, "csrf": csrf,
            "updated": stored.map { ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: $0.updatedAt)) } ?? "",
            "diagnostics": diagnostics.map(\.values),
            "validity": diagnostics.isEmpty ? "" : "\(diagnostics.count) problem\(diagnostics.count == 1 ? "" : "s").",
            "assignments": try await api.store.assignments().filter { $0.pipeline == name }.map { assignment -> [String: Any] in
                let matching = agents.filter { assignment.applies(to: $0) }.count
                return [
                    "id": assignment.id, "target": targets(assignment), "matching": "\(matching) agent\(matching == 1 ? "" : "s") now",
                    "name": name, "csrf": csrf, "canChange": canChange,
                ]
            },
        ]
        if stored != nil {
            let rollout = try await rollout(name)
            values["agents"] = rollout.agents
            values["rolloutSummary"] = rollout.summary
        }
        if let preview { values["preview"] = preview }
        if let message { values["message"] = message }
        if let error { values["error"] = error }
        return page("pipeline", title: "Document \(name)", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
