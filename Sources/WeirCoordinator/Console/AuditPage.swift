import Foundation
import Hummingbird
import NIOCore

/// The audit page and its CSV export: admins and operators (viewers see who did what nowhere).
extension Console {
    static let auditOutcomes = ["ok", "failed", "refused", "locked"]

    func registerAudit(on router: Router<CoordinatorContext>) {
        router.get("audit") { request, context -> Response in
            if let refused = await require(.operator, "read the audit log", context: context) { return refused }
            let (filter, parameters) = Self.auditFilter(request.uri.queryParameters)
            let formatter = ISO8601DateFormatter()
            let entries = try await audit.entries(filter).map { entry -> [String: Any] in
                [
                    "when": formatter.string(from: Date(timeIntervalSince1970: entry.time)), "actor": entry.actor, "source": entry.source,
                    "action": entry.action, "outcome": entry.outcome, "detail": entry.detail,
                ]
            }
            return page(
                "audit", title: "Audit",
                [
                    "auditPage": true, "entries": entries, "actor": filter.actor ?? "", "action": filter.action ?? "",
                    "outcomes": Self.auditOutcomes.map { ["value": $0, "selected": $0 == filter.outcome] }, "query": parameters,
                ])
        }
        router.get("audit.csv") { request, context -> Response in
            if let refused = await require(.operator, "export the audit log", context: context) { return refused }
            var (filter, _) = Self.auditFilter(request.uri.queryParameters)
            filter.limit = 10_000
            var csv = "time,actor,source,action,outcome,detail\r\n"
            let formatter = ISO8601DateFormatter()
            for entry in try await audit.entries(filter) {
                csv += [formatter.string(from: Date(timeIntervalSince1970: entry.time)), entry.actor, entry.source, entry.action, entry.outcome, entry.detail]
                    .map(Self.csvField).joined(separator: ",") + "\r\n"
            }
            return Response(
                status: .ok,
                headers: [.contentType: "text/csv; charset=utf-8", .contentDisposition: "attachment; filename=\"weir-audit.csv\""],
                body: .init(byteBuffer: ByteBuffer(string: csv)))
        }
    }

    static func auditFilter(_ parameters: Hummingbird.Parameters) -> (AuditLog.Filter, String) {
        var filter = AuditLog.Filter()
        filter.actor = parameters.get("actor").flatMap { $0.isEmpty ? nil : $0 }
        filter.action = parameters.get("action").flatMap { $0.isEmpty ? nil : $0 }
        filter.outcome = parameters.get("outcome").flatMap { auditOutcomes.contains($0) ? $0 : nil }
        var components = URLComponents()
        components.queryItems = [("actor", filter.actor), ("action", filter.action), ("outcome", filter.outcome)]
            .compactMap { name, value in value.map { URLQueryItem(name: name, value: $0) } }
        return (filter, components.percentEncodedQuery ?? "")
    }

    /// RFC 4180 quoting; a field that a spreadsheet would run as a formula (=, +, -, @) gets a leading quote.
    static func csvField(_ value: String) -> String {
        var text = value
        if let first = text.first, "=+-@\t\r".contains(first) { text = "'" + text }
        guard text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
