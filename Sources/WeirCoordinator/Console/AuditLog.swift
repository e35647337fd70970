import Foundation
import SQLKit

/// One thing someone did, or tried to do and was refused.
struct AuditEntry: Codable, Sendable, Equatable {
    var id: String
    /// Unix seconds.
    var time: Double
    /// `account:NAME`, `token:NAME`, or what a failed sign-in claimed to be (`login:NAME`).
    var actor: String
    /// The client's address.
    var source: String
    /// What: `sign_in`, `sign_in.failed`, `sign_out`, `PUT /api/v1/pipelines/edge`, …
    var action: String
    /// ok, refused (authorization or CSRF), failed (the request was wrong), locked (sign-ins refused).
    var outcome: String
    /// More: the HTTP status, the reason, or the document before and after.
    var detail: String

    enum CodingKeys: String, CodingKey { case id, time, actor, source, action, outcome, detail }
}

/// The audit trail: append-only (there is no update or delete), in the coordinator's database.
struct AuditLog: Sendable {
    let database: CoordinatorDatabase
    var sql: any SQLDatabase { database.sql }

    struct Filter: Sendable {
        var actor: String?
        var action: String?
        var outcome: String?
        var since: Double?
        var limit = 200
    }

    /// Ids sort by time: microseconds since 1970, then random digits (two instances writing at once).
    private static func newID(_ time: Double) -> String {
        String(format: "%016llu-%04x", UInt64(time * 1_000_000), UInt16.random(in: 0...UInt16.max))
    }

    func record(actor: String, source: String, action: String, outcome: String, detail: String = "") async {
        let time = Date().timeIntervalSince1970
        let entry = AuditEntry(
            id: Self.newID(time), time: time, actor: String(actor.prefix(200)), source: source, action: String(action.prefix(300)),
            outcome: outcome, detail: String(detail.prefix(64 << 10)))
        // An audit write that fails must not hide the action's own result; it is logged by the database layer.
        try? await sql.raw("""
            INSERT INTO audit_log (id, time, actor, source, action, outcome, detail)
            VALUES (\(bind: entry.id), \(bind: entry.time), \(bind: entry.actor), \(bind: entry.source), \(bind: entry.action),
                    \(bind: entry.outcome), \(bind: entry.detail))
            """).run()
    }

    /// Newest first.
    func entries(_ filter: Filter) async throws -> [AuditEntry] {
        var query = SQLQueryString("SELECT * FROM audit_log WHERE 1 = 1")
        if let actor = filter.actor, !actor.isEmpty { query = query + " AND actor = \(bind: actor)" }
        if let action = filter.action, !action.isEmpty { query = query + " AND action LIKE \(bind: "%" + action + "%")" }
        if let outcome = filter.outcome, !outcome.isEmpty { query = query + " AND outcome = \(bind: outcome)" }
        if let since = filter.since { query = query + " AND time >= \(bind: since)" }
        query = query + " ORDER BY id DESC LIMIT \(literal: max(1, min(filter.limit, 10_000)))"
        return try await sql.raw(query).all().map { row in
            AuditEntry(
                id: try row.decode(column: "id", as: String.self), time: try row.decode(column: "time", as: Double.self),
                actor: try row.decode(column: "actor", as: String.self), source: try row.decode(column: "source", as: String.self),
                action: try row.decode(column: "action", as: String.self), outcome: try row.decode(column: "outcome", as: String.self),
                detail: try row.decode(column: "detail", as: String.self))
        }
    }
}

/// What a change did, in words, for its audit entry: set by the code that makes the change (shared by the
/// REST API and the console), read by whoever records the entry. Before/after of lists and documents.
final class AuditNote: @unchecked Sendable {
    private let lock = NSLock()
    private var text = ""

    @TaskLocal static var current: AuditNote?

    var value: String { lock.withLock { text } }

    /// Notes `detail` for the change being served (nothing when no entry point asked for one).
    static func set(_ detail: String) {
        guard let note = current else { return }
        note.lock.withLock { note.text = detail }
    }
}

enum AuditDiff {
    /// "added: a, b; removed: c" (at most `limit` of each named, then how many more).
    static func entries(before: [String], after: [String], limit: Int = 50) -> String {
        let old = Set(before), new = Set(after)
        let added = after.filter { !old.contains($0) }, removed = before.filter { !new.contains($0) }
        func names(_ keys: [String]) -> String {
            keys.prefix(limit).joined(separator: ", ") + (keys.count > limit ? " and \(keys.count - limit) more" : "")
        }
        var parts: [String] = []
        if !added.isEmpty { parts.append("added: " + names(added)) }
        if !removed.isEmpty { parts.append("removed: " + names(removed)) }
        if parts.isEmpty { parts.append("entries unchanged") }
        return parts.joined(separator: "; ") + " (\(before.count) → \(after.count) entries)"
    }

    /// A document before and after a change, secrets redacted, for the trail.
    static func document(before: String?, after: String?) -> String {
        "before:\n" + (before ?? "(none)") + "\nafter:\n" + (after ?? "(deleted)")
    }
}
