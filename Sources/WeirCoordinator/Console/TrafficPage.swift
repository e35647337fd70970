import Foundation
import Hummingbird
import NIOCore

/// Traffic history on the console: bytes per second over a chosen range for the fleet, one agent or one
/// pipeline (a chart drawn on the server as SVG: no chart script), the busiest agents and pipelines of the
/// range, and any view as CSV.
extension Console {
    struct TrafficQuery {
        var agent: String
        var pipeline: String
        /// One client address (count.ebpf's per-IP counters): the chart and CSV show it alone.
        var address: String
        /// "address": the CSV has a row per client address.
        var byAddress: Bool
        var range: String
        var resolution: TrafficHistory.Resolution
        var seconds: Double

        static let ranges: [(name: String, seconds: Double, resolution: TrafficHistory.Resolution, label: String)] = [
            ("1h", 3600, .minute, "last hour (per minute)"), ("24h", 86400, .minute, "last day (per minute)"),
            ("30d", 30 * 86400, .hour, "last 30 days (per hour)"), ("365d", 365 * 86400, .day, "last year (per day)"),
        ]

        init(_ parameters: Hummingbird.Parameters) {
            agent = (parameters.get("agent") ?? "").trimmingCharacters(in: .whitespaces)
            pipeline = (parameters.get("pipeline") ?? "").trimmingCharacters(in: .whitespaces)
            address = (parameters.get("address") ?? "").trimmingCharacters(in: .whitespaces)
            byAddress = !address.isEmpty || parameters.get("by") == "address"
            let chosen = Self.ranges.first { $0.name == parameters.get("range") } ?? Self.ranges[1]
            (range, seconds, resolution) = (chosen.name, chosen.seconds, chosen.resolution)
        }

        var text: String {
            var components = URLComponents()
            components.queryItems = [URLQueryItem(name: "range", value: range)]
                + (agent.isEmpty ? [] : [URLQueryItem(name: "agent", value: agent)])
                + (pipeline.isEmpty ? [] : [URLQueryItem(name: "pipeline", value: pipeline)])
                + (address.isEmpty ? [] : [URLQueryItem(name: "address", value: address)])
            return components.percentEncodedQuery ?? ""
        }

        /// This view with one client address chosen.
        func text(address: String) -> String {
            var query = self
            query.address = address
            return query.text
        }
    }

    func registerTraffic(on router: Router<CoordinatorContext>) {
        let history = TrafficHistory(database: api.store.database)
        router.get("traffic") { request, _ -> Response in
            let query = TrafficQuery(request.uri.queryParameters)
            let rows = try await history.rows(query.resolution, since: Date().timeIntervalSince1970 - query.seconds, agent: query.agent, pipeline: query.pipeline)
            var totals: [String: (agent: String, pipeline: String, bytesIn: Double, bytesOut: Double, connections: Double)] = [:]
            for row in rows {
                let key = row.agent + "\n" + row.pipeline
                var total = totals[key] ?? (row.agent, row.pipeline, 0, 0, 0)
                total.bytesIn += row.bytesIn
                total.bytesOut += row.bytesOut
                total.connections += row.connections
                totals[key] = total
            }
            let busiest = totals.values.sorted { $0.bytesIn + $0.bytesOut > $1.bytesIn + $1.bytesOut }.prefix(100)
            var addresses: [String: (bytesIn: Double, bytesOut: Double)] = [:]
            for row in try await history.addressRows(
                query.resolution, since: Date().timeIntervalSince1970 - query.seconds, agent: query.agent, pipeline: query.pipeline)
            {
                addresses[row.address, default: (0, 0)].bytesIn += row.bytesIn
                addresses[row.address, default: (0, 0)].bytesOut += row.bytesOut
            }
            let values: [String: Any] = [
                "address": query.address, "addressQuery": query.text(address: ""),
                "addresses": addresses.sorted { ($0.value.bytesIn + $0.value.bytesOut, $1.key) > ($1.value.bytesIn + $1.value.bytesOut, $0.key) }
                    .prefix(50).map { address, total -> [String: Any] in
                        ["address": address, "in": Self.bytes(total.bytesIn), "out": Self.bytes(total.bytesOut), "link": query.text(address: address),
                         "chosen": address == query.address]
                    },
                "trafficPage": true, "agent": query.agent, "pipeline": query.pipeline, "query": query.text,
                "ranges": TrafficQuery.ranges.map { ["value": $0.name, "label": $0.label, "selected": $0.name == query.range] },
                "agents": try await api.store.agents().map(\.id),
                "totalIn": Self.bytes(rows.reduce(0) { $0 + $1.bytesIn }), "totalOut": Self.bytes(rows.reduce(0) { $0 + $1.bytesOut }),
                "busiest": busiest.map { total -> [String: Any] in
                    [
                        "agent": total.agent, "pipeline": total.pipeline, "in": Self.bytes(total.bytesIn), "out": Self.bytes(total.bytesOut),
                        "connections": Int(total.connections),
                    ]
                },
            ]
            return page("traffic", title: "Traffic", values)
        }
        router.get("traffic.svg") { request, _ -> Response in
            let query = TrafficQuery(request.uri.queryParameters)
            let now = Date().timeIntervalSince1970
            let rows = try await chartRows(history, query, since: now - query.seconds)
            let svg = TrafficChart(rows: rows, resolution: query.resolution, start: now - query.seconds, end: now).svg
            return Response(status: .ok, headers: [.contentType: "image/svg+xml", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(string: svg)))
        }
        router.get("traffic.csv") { request, _ -> Response in
            let query = TrafficQuery(request.uri.queryParameters)
            let formatter = ISO8601DateFormatter()
            let since = Date().timeIntervalSince1970 - query.seconds
            if query.byAddress {
                var csv = "time,seconds,agent,pipeline,address,bytes_in,bytes_out\r\n"
                for row in try await history.addressRows(query.resolution, since: since, agent: query.agent, pipeline: query.pipeline, address: query.address) {
                    csv += [formatter.string(from: Date(timeIntervalSince1970: Double(row.bucket))), "\(query.resolution.seconds)", row.agent, row.pipeline,
                            row.address, String(format: "%.0f", row.bytesIn), String(format: "%.0f", row.bytesOut)]
                        .map(Self.csvField).joined(separator: ",") + "\r\n"
                }
                return Self.csvResponse(csv, name: "weir-traffic-addresses-\(query.range).csv")
            }
            let rows = try await history.rows(query.resolution, since: since, agent: query.agent, pipeline: query.pipeline)
            var csv = "time,seconds,agent,pipeline,bytes_in,bytes_out,connections\r\n"
            for row in rows {
                csv += [formatter.string(from: Date(timeIntervalSince1970: Double(row.bucket))), "\(query.resolution.seconds)", row.agent, row.pipeline,
                        String(format: "%.0f", row.bytesIn), String(format: "%.0f", row.bytesOut), String(format: "%.0f", row.connections)]
                    .map(Self.csvField).joined(separator: ",") + "\r\n"
            }
            return Self.csvResponse(csv, name: "weir-traffic-\(query.range).csv")
        }
    }

    static func csvResponse(_ csv: String, name: String) -> Response {
        Response(
            status: .ok, headers: [.contentType: "text/csv; charset=utf-8", .contentDisposition: "attachment; filename=\"\(name)\""],
            body: .init(byteBuffer: ByteBuffer(string: csv)))
    }

    /// What the chart draws: the pipelines' rows, or one client address's.
    private func chartRows(_ history: TrafficHistory, _ query: TrafficQuery, since: Double) async throws -> [TrafficHistory.Row] {
        guard !query.address.isEmpty else {
            return try await history.rows(query.resolution, since: since, agent: query.agent, pipeline: query.pipeline)
        }
        return try await history.addressRows(query.resolution, since: since, agent: query.agent, pipeline: query.pipeline, address: query.address).map {
            TrafficHistory.Row(bucket: $0.bucket, agent: $0.agent, pipeline: $0.pipeline, bytesIn: $0.bytesIn, bytesOut: $0.bytesOut, connections: 0)
        }
    }
}

/// Bytes per second in and out over time, as an SVG drawn from numbers only (nothing a user typed).
struct TrafficChart {
    let rows: [TrafficHistory.Row]
    let resolution: TrafficHistory.Resolution
    let start: Double
    let end: Double
    static let width = 900.0, height = 220.0, left = 70.0, bottom = 24.0

    var svg: String {
        let step = Double(resolution.seconds)
        var inbound: [Int64: Double] = [:], outbound: [Int64: Double] = [:]
        for row in rows {
            inbound[row.bucket, default: 0] += row.bytesIn / step
            outbound[row.bucket, default: 0] += row.bytesOut / step
        }
        let first = Int64(start) / resolution.seconds * resolution.seconds, last = Int64(end) / resolution.seconds * resolution.seconds
        let buckets = Array(stride(from: first, through: last, by: Int(resolution.seconds)))
        let peak = max(1, (Array(inbound.values) + Array(outbound.values)).max() ?? 1)
        let plotWidth = Self.width - Self.left - 10, plotHeight = Self.height - Self.bottom - 10
        func x(_ bucket: Int64) -> Double { Self.left + plotWidth * Double(bucket - first) / max(1, Double(last - first)) }
        func y(_ value: Double) -> Double { 10 + plotHeight * (1 - value / peak) }
        func line(_ values: [Int64: Double]) -> String {
            buckets.map { String(format: "%.1f,%.1f", x($0), y(values[$0] ?? 0)) }.joined(separator: " ")
        }
        let formatter = DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = resolution == .minute ? "HH:mm" : "yyyy-MM-dd"
        let rate = { (value: Double) in Console.bytes(value) + "/s" }
        return """
            <svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 \(Int(Self.width)) \(Int(Self.height))" font-family="sans-serif" font-size="11">
            <rect width="100%" height="100%" fill="#fff"/>
            <line x1="\(Self.left)" y1="10" x2="\(Self.left)" y2="\(10 + plotHeight)" stroke="#d9dee5"/>
            <line x1="\(Self.left)" y1="\(10 + plotHeight)" x2="\(Self.width - 10)" y2="\(10 + plotHeight)" stroke="#d9dee5"/>
            <text x="\(Self.left - 6)" y="16" text-anchor="end" fill="#5b6676">\(rate(peak))</text>
            <text x="\(Self.left - 6)" y="\(10 + plotHeight)" text-anchor="end" fill="#5b6676">0</text>
            <text x="\(Self.left)" y="\(Self.height - 6)" fill="#5b6676">\(formatter.string(from: Date(timeIntervalSince1970: Double(first)))) UTC</text>
            <text x="\(Self.width - 10)" y="\(Self.height - 6)" text-anchor="end" fill="#5b6676">\(formatter.string(from: Date(timeIntervalSince1970: Double(last)))) UTC</text>
            <polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="\(line(inbound))"/>
            <polyline fill="none" stroke="#1a7f37" stroke-width="1.5" points="\(line(outbound))"/>
            <text x="\(Self.width - 10)" y="22" text-anchor="end" fill="#1f5fbf">in</text>
            <text x="\(Self.width - 10)" y="36" text-anchor="end" fill="#1a7f37">out</text>
            </svg>
            """
    }
}
