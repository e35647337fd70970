import Foundation
import Hummingbird

/// GET /api/v1/audit: the audit trail for scripts and SIEMs, filtered like the console's page. Admins and
/// operators only (viewers: 403), as on the console.
struct AuditAPI: Sendable {
    let audit: AuditLog

    func register(on router: Router<CoordinatorContext>) {
        router.group("api/v1").get("audit") { request, _ -> Response in
            guard APIRole.current != .viewer else { throw APIError(status: .forbidden, message: "role viewer cannot read the audit trail") }
            let parameters = request.uri.queryParameters
            var filter = AuditLog.Filter()
            filter.actor = parameters.get("actor")
            filter.action = parameters.get("action")
            filter.outcome = parameters.get("outcome")
            if let since = parameters.get("since") {
                guard let value = Double(since) else { throw APIError.badRequest("since: Unix seconds") }
                filter.since = value
            }
            if let limit = parameters.get("limit") {
                guard let value = Int(limit), (1...10_000).contains(value) else { throw APIError.badRequest("limit: 1-10000") }
                filter.limit = value
            }
            return JSONResponse.make(try await audit.entries(filter))
        }
    }
}
