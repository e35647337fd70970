import HTTPTypes
import Hummingbird

/// Bearer API tokens on everything under /api/v1 except the agents' own endpoint and the OpenAPI document:
/// no or an unknown token is 401; a viewer may read (GET) but not write (403), an operator may write all but
/// tokens.
struct APIAuthenticationMiddleware<Context: RequestContext>: RouterMiddleware {
    let store: CoordinatorStore
    let openPaths: Set<String>
    static var tokenPaths: [String] { ["/api/v1/tokens", "/api/v1/enrollment-tokens"] }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard path.hasPrefix("/api/"), !openPaths.contains(path) else { return try await next(request, context) }
        guard let authorization = request.headers[.authorization], authorization.hasPrefix("Bearer "),
            let token = try await store.apiToken(secret: String(authorization.dropFirst("Bearer ".count)))
        else {
            return JSONResponse.make(
                ErrorBody(error: "an API token is required (Authorization: Bearer <token>)", details: nil), status: .unauthorized,
                headers: [.wwwAuthenticate: "Bearer"])
        }
        let writes = request.method != .get && request.method != .head
        switch token.role {
        case .viewer where writes:
            throw APIError(status: .forbidden, message: "token \"\(token.name)\" has role viewer, which cannot change anything")
        case .operator where writes && Self.tokenPaths.contains(where: { path == $0 || path.hasPrefix($0 + "/") }):
            throw APIError(status: .forbidden, message: "token \"\(token.name)\" has role operator, which cannot manage tokens")
        default:
            break
        }
        // Handlers read the role (to redact secrets for viewers) from the task they run in.
        return try await APIRole.$current.withValue(token.role) { try await next(request, context) }
    }
}
