import Foundation
import Hummingbird
import WeirCoordinatorProtocol

/// GET /api/v1/agents/{id}/dns/queries: the newest answers of an agent's dns.filter stages, asked of the
/// agent over its connection (agents keep them in memory, `query_log.ring`; nothing is stored here). Who
/// asked for which name is personal data: operators and admins only.
extension CoordinatorAPI {
    static let resultNames: Set<String> = ["allowed", "blocked", "cached", "servfail", "refused"]

    func registerDNSQueries(on api: RouterGroup<CoordinatorContext>) {
        api.get("agents/{id}/dns/queries") { request, context in
            guard APIRole.current != .viewer else {
                throw APIError(status: .forbidden, message: "the DNS query log names clients and what they asked for; role viewer cannot read it")
            }
            let id = try context.parameters.require("id")
            guard try await store.agent(id: id) != nil else { throw APIError.notFound("agent \"\(id)\"") }
            let query = request.uri.queryParameters
            var limit = 100
            if let text = query["limit"] {
                guard let number = Int(String(text)), (1...10_000).contains(number) else { throw APIError.badRequest("limit must be 1-10000") }
                limit = number
            }
            let result = query["result"].map(String.init)
            if let result, !Self.resultNames.contains(result) {
                throw APIError.badRequest("result must be one of \(Self.resultNames.sorted().joined(separator: ", "))")
            }
            let search = query["search"].map(String.init).flatMap { $0.isEmpty ? nil : $0 }
            if let search, search.utf8.count > 255 { throw APIError.badRequest("search is at most 255 bytes") }
            guard let connection = await agentSessions.distributor.connection(of: id) else {
                throw APIError(
                    status: .serviceUnavailable,
                    message: "agent \"\(id)\" is not connected to this coordinator instance (offline, or connected to another instance); its query log is kept on the agent")
            }
            let response: DNSQueriesResponse
            do {
                response = try await agentSessions.questions.dnsQueries(
                    DNSQueriesRequest(id: "", pipeline: query["pipeline"].map(String.init), search: search, result: result, limit: limit), over: connection)
            } catch let error as AgentQuestions.Unanswered {
                throw APIError(status: .gatewayTimeout, message: error.description)
            }
            if let error = response.error { throw APIError(status: .notFound, message: error) }
            return JSONResponse.make(DNSQueriesView(agent: id, pipelines: response.pipelines, entries: response.entries))
        }
    }
}

struct DNSQueriesView: Codable {
    var agent: String
    /// The agent's pipelines that keep a query log ring.
    var pipelines: [String]
    /// Newest first.
    var entries: [DNSQueryEntry]
}
