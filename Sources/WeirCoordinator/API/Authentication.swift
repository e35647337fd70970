import HTTPTypes
import Hummingbird

/// Bearer API tokens on everything under /api/v1 except the agents' own endpoint and the OpenAPI document:
/// no or an unknown token is 401; a viewer may read (GET) but not write (403), an operator may write all but
/// tokens. Every write and every refusal goes to the audit trail, with the token's name as the actor.
struct APIAuthenticationMiddleware: RouterMiddleware {
    typealias Context = CoordinatorContext
    let store: CoordinatorStore
    let audit: AuditLog
    let openPaths: Set<String>
    static var tokenPaths: [String] { ["/api/v1/tokens", "/api/v1/enrollment-tokens"] }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard path.hasPrefix("/api/"), !openPaths.contains(path) else { return try await next(request, context) }
        let action = "\(request.method) \(path)"
        guard let authorization = request.headers[.authorization], authorization.hasPrefix("Bearer "),
            let token = try await store.apiToken(secret: String(authorization.dropFirst("Bearer ".count)))
        else {
            await audit.record(actor: "token:?", source: context.clientAddress, action: action, outcome: "refused", detail: "401: no or unknown API token")
            return JSONResponse.make(
                ErrorBody(error: "an API token is required (Authorization: Bearer <token>)", details: nil), status: .unauthorized,
                headers: [.wwwAuthenticate: "Bearer"])
        }
        let actor = "token:\(token.name)"
        let writes = request.method != .get && request.method != .head
        var refusal: String?
        switch token.role {
        case .viewer where writes:
            refusal = "token \"\(token.name)\" has role viewer, which cannot change anything"
        case .operator where writes && Self.tokenPaths.contains(where: { path == $0 || path.hasPrefix($0 + "/") }):
            refusal = "token \"\(token.name)\" has role operator, which cannot manage tokens"
        default:
            break
        }
        if let refusal {
            await audit.record(actor: actor, source: context.clientAddress, action: action, outcome: "refused", detail: "403: \(refusal)")
            throw APIError(status: .forbidden, message: refusal)
        }
        // Handlers read the role (to redact secrets for viewers) from the task they run in.
        let response: Response
        let note = AuditNote()
        do {
            response = try await AuditNote.$current.withValue(note) {
                try await APIRole.$current.withValue(token.role) { try await next(request, context) }
            }
        } catch {
            if writes || (error as? APIError)?.status == .forbidden {
                let status = (error as? APIError)?.status ?? (error as? any HTTPResponseError)?.status ?? .internalServerError
                let outcome = status == .forbidden ? "refused" : "failed"
                let message = (error as? APIError)?.message ?? String(describing: error)
                await audit.record(actor: actor, source: context.clientAddress, action: action, outcome: outcome, detail: "\(status.code): \(message)")
            }
            throw error
        }
        if writes {
            let ok = (200..<400).contains(response.status.code)
            let detail = note.value.isEmpty ? "\(response.status.code)" : "\(response.status.code): \(note.value)"
            await audit.record(actor: actor, source: context.clientAddress, action: action, outcome: ok ? "ok" : "failed", detail: detail)
        }
        return response
    }
}
