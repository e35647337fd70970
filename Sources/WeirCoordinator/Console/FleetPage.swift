import Foundation
import Hummingbird
import NIOConcurrencyHelpers
import NIOCore
import Prometheus

/// The fleet page: every agent with its state, filtered and paged on the server, and kept current by a
/// server-sent event stream that sends the re-rendered rows when they change.
extension Console {
    static let pageSize = 100
    /// How often a live page's rows are rendered again (and "last seen" ages).
    static let liveInterval: Duration = .seconds(2)

    struct FleetQuery {
        var selector: LabelSelector?
        var labelText = ""
        var labelError: String?
        var status = ""
        var page = 1

        init(_ parameters: Hummingbird.Parameters) {
            labelText = (parameters.get("label") ?? "").trimmingCharacters(in: .whitespaces)
            if !labelText.isEmpty {
                do { selector = try LabelSelector(parsing: labelText) } catch {
                    labelError = "\"\(labelText)\" is not a label filter: write key=value, several separated by commas."
                }
            }
            status = ["online", "offline"].contains(parameters.get("status") ?? "") ? parameters.get("status")! : ""
            page = max(1, Int(parameters.get("page") ?? "") ?? 1)
        }

        func text(page: Int? = nil) -> String {
            var items: [URLQueryItem] = []
            if !labelText.isEmpty { items.append(.init(name: "label", value: labelText)) }
            if !status.isEmpty { items.append(.init(name: "status", value: status)) }
            if let page, page > 1 { items.append(.init(name: "page", value: "\(page)")) }
            var components = URLComponents()
            components.queryItems = items
            return components.percentEncodedQuery ?? ""
        }
    }

    /// What the rows, summary and pager show, rendered.
    struct FleetView {
        var rows: String
        var summary: String
        var pager: String
        var values: [String: Any]
    }

    func registerFleet(on router: Router<CoordinatorContext>) {
        router.get("/") { request, _ -> Response in
            let query = FleetQuery(request.uri.queryParameters)
            let view = try await fleetView(query)
            var values = view.values
            values["fleetPage"] = true
            values["summary"] = view.summary
            values["label"] = query.labelText
            if let error = query.labelError { values["labelError"] = error }
            values["statusAny"] = query.status.isEmpty
            values["statusOnline"] = query.status == "online"
            values["statusOffline"] = query.status == "offline"
            values["filtered"] = !query.labelText.isEmpty || !query.status.isEmpty
            values["query"] = query.text(page: query.page)
            return page("fleet", title: "Fleet", values)
        }
        router.get("fleet/events") { request, _ -> Response in
            let query = FleetQuery(request.uri.queryParameters)
            return try liveEvents("fleet?" + query.text(page: query.page)) {
                let view = try await fleetView(query)
                return [("rows", view.rows), ("summary", view.summary), ("pager", view.pager)]
            }
        }
    }

    /// A server-sent event stream for a live page: `render`'s events every `liveInterval`, sent when they
    /// change. Bounded by `streams` (in all, and per session); ends when the session it started with is no
    /// longer valid. Streams of the same view (`key`) share one rendering per interval.
    func liveEvents(_ key: String, _ render: @escaping @Sendable () async throws -> [(name: String, data: String)]) throws -> Response {
        guard let user = ConsoleUser.current else { throw HTTPError(.unauthorized) }
        let session = user.session.idHash
        if let refusal = streams.open(session: session) {
            let (status, text): (HTTPResponse.Status, String) = switch refusal {
            case .full: (.serviceUnavailable, "too many live pages on this coordinator\n")
            case .perSession: (.tooManyRequests, "too many live pages open in this session; close some\n")
            }
            return Response(status: status, headers: [.retryAfter: "10"], body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        return Response(
            status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-store"],
            body: ResponseBody { writer in
                defer { streams.close(session: session) }
                var last = ""
                while !Task.isCancelled {
                    // The session is asked again every round: signing out, a revoked session or its timeout
                    // ends the stream (without extending the session: a stream is not activity).
                    guard (try? await validate(user.session, touch: false)) ?? nil != nil else {
                        try await writer.write(ByteBuffer(string: Self.event("signed_out", "")))
                        break
                    }
                    let message = try await streams.rendered(key, within: Self.liveInterval) {
                        try await render().map { Self.event($0.name, $0.data) }.joined()
                    }
                    // Unchanged parts are not sent again; a comment keeps proxies from closing the stream.
                    try await writer.write(ByteBuffer(string: message == last ? ": still\n\n" : message))
                    last = message
                    try await Task.sleep(for: Self.liveInterval)
                }
                try await writer.finish(nil)
            })
    }

    /// One server-sent event; every line of `data` gets its own `data:` field.
    static func event(_ name: String, _ data: String) -> String {
        "event: \(name)\n" + data.split(separator: "\n", omittingEmptySubsequences: false).map { "data: \($0)\n" }.joined() + "\n"
    }

    func fleetView(_ query: FleetQuery) async throws -> FleetView {
        let now = Date().timeIntervalSince1970
        let all = try await api.agentViews().sorted { $0.id < $1.id }
        let online = all.filter(\.online).count
        var matching = all
        if let selector = query.selector { matching = matching.filter { selector.matches($0.labels) } }
        if query.status == "online" { matching = matching.filter(\.online) }
        if query.status == "offline" { matching = matching.filter { !$0.online } }
        let pages = max(1, (matching.count + Self.pageSize - 1) / Self.pageSize)
        let page = min(query.page, pages)
        let shown = matching.dropFirst((page - 1) * Self.pageSize).prefix(Self.pageSize)
        let recent = try await TrafficHistory(database: api.store.database).minuteTotals(
            agents: shown.map(\.id), since: now - Double(Sparkline.minutes * 60))
        let rows: [[String: Any]] = shown.map { agent in
            let sparkline = Sparkline(recent[agent.id] ?? [:], now: now)
            let state = agent.revoked ? "revoked" : agent.online ? "online" : "offline"
            let bytesIn = agent.pipelines.values.reduce(0) { $0 + $1.bytesIn }
            let bytesOut = agent.pipelines.values.reduce(0) { $0 + $1.bytesOut }
            return [
                "id": agent.id, "state": state, "seen": "last seen " + Self.age(now - agent.lastSeen),
                "version": agent.version.isEmpty ? "—" : agent.version,
                "labels": agent.labels.sorted { $0.key < $1.key }.map { ["text": "\($0.key)=\($0.value)"] },
                "desired": Self.shortVersion(agent.desiredVersion), "applied": Self.shortVersion(agent.appliedVersion),
                "bundle": agent.status, "bundleText": agent.status == "in_sync" ? "in sync" : agent.status,
                "traffic": "\(Self.bytes(bytesIn)) / \(Self.bytes(bytesOut))", "lastError": agent.lastError ?? "",
                "sparkline": sparkline.points, "rate": sparkline.caption,
            ]
        }
        let refused = all.filter { $0.status == "refused" }.count, pending = all.filter { $0.status == "pending" }.count
        let summary = "\(all.count) agents · \(online) online · \(all.count - online) offline · \(pending) pending · \(refused) refused"
        var emptyText = "No agents yet. Create an enrollment token (weir ctl enrollment-tokens create --label site=NAME) and start weir agent with it."
        if !all.isEmpty { emptyText = "No agent matches this filter." }
        var pager: [String: Any] = [
            "range": matching.isEmpty ? "0 agents" : "\((page - 1) * Self.pageSize + 1)–\((page - 1) * Self.pageSize + shown.count) of \(matching.count)"
        ]
        if page > 1 { pager["previous"] = query.text(page: page - 1) }
        if page < pages { pager["next"] = query.text(page: page + 1) }
        let values: [String: Any] = ["agents": rows, "emptyText": emptyText, "pages": pager]
        return FleetView(
            rows: templates.render("fleet_rows", values), summary: summary, pager: templates.render("pager", values), values: values)
    }

    static func shortVersion(_ version: String?) -> String {
        guard let version, !version.isEmpty else { return "none" }
        return String(version.prefix(12))
    }

    /// "3 s ago", "5 min ago", "2 h ago", "4 days ago".
    static func age(_ seconds: Double) -> String {
        let value = max(0, Int(seconds))
        switch value {
        case ..<60: return "\(value) s ago"
        case ..<3600: return "\(value / 60) min ago"
        case ..<86400: return "\(value / 3600) h ago"
        default: return "\(value / 86400) days ago"
        }
    }

    static func bytes(_ value: Double) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var amount = value, unit = 0
        while amount >= 1024, unit < units.count - 1 {
            amount /= 1024
            unit += 1
        }
        return unit == 0 ? "\(Int(amount)) B" : String(format: "%.1f %@", amount, units[unit])
    }
}

/// The last half hour of an agent's traffic as a small line (SVG points), scaled to its own peak, and the
/// caption that says what it shows.
struct Sparkline {
    static let minutes = 30
    static let width = 90.0, height = 18.0

    let points: String
    let caption: String

    init(_ minutes: [Int64: Double], now: Double) {
        let last = Int64(now) / 60 * 60
        // The line ends with the current minute, still filling: traffic shows as soon as a heartbeat brings it.
        let buckets = (0..<Self.minutes).reversed().map { last - Int64($0) * 60 }
        let values = buckets.map { minutes[$0] ?? 0 }
        let peak = values.max() ?? 0
        points = values.enumerated().map { index, value in
            let x = Double(index) * Self.width / Double(Self.minutes - 1)
            let y = Self.height - 1 - (peak > 0 ? value / peak * (Self.height - 2) : 0)
            return String(format: "%.1f,%.1f", x, y)
        }.joined(separator: " ")
        caption = "last \(Self.minutes) min, per minute: peak \(Console.bytes(peak / 60))/s"
    }
}

/// Open live streams, bounded in all and per session (each holds a connection), and the views they
/// send, rendered once per interval however many streams show them.
final class LiveStreams: Sendable {
    enum Refusal { case full, perSession }

    private struct State {
        var open = 0
        var perSession: [String: Int] = [:]
        var rendered: [String: (at: ContinuousClock.Instant, text: String)] = [:]
    }

    private let state = NIOLockedValueBox(State())
    let limit: Int
    let sessionLimit: Int
    /// `weir_coordinator_console_live_streams`.
    let gauge: Gauge?

    init(limit: Int, sessionLimit: Int = 8, gauge: Gauge? = nil) {
        self.limit = limit
        self.sessionLimit = sessionLimit
        self.gauge = gauge
    }

    func open(session: String) -> Refusal? {
        state.withLockedValue { state in
            guard state.open < limit else { return .full }
            guard state.perSession[session, default: 0] < sessionLimit else { return .perSession }
            state.open += 1
            state.perSession[session, default: 0] += 1
            gauge?.set(to: Double(state.open))
            return nil
        }
    }

    func close(session: String) {
        state.withLockedValue { state in
            state.open -= 1
            gauge?.set(to: Double(state.open))
            state.perSession[session, default: 1] -= 1
            if state.perSession[session] == 0 { state.perSession[session] = nil }
            // Views nobody follows any more are forgotten with the last stream.
            if state.open == 0 { state.rendered.removeAll() }
        }
    }

    var current: Int { state.withLockedValue { $0.open } }

    /// `key`'s view rendered less than `interval` ago, or rendered now (two streams asking at once may both
    /// render: no lock is held across the rendering).
    func rendered(_ key: String, within interval: Duration, _ render: () async throws -> String) async throws -> String {
        let now = ContinuousClock.now
        if let cached = state.withLockedValue({ $0.rendered[key] }), now - cached.at < interval * 0.9 { return cached.text }
        let text = try await render()
        state.withLockedValue { state in
            // Bounded by the views open streams follow (at most one per stream).
            if state.rendered.count >= limit { state.rendered.removeAll() }
            state.rendered[key] = (now, text)
        }
        return text
    }
}
