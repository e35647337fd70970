import Foundation
import SQLKit
import WeirCoordinatorProtocol
import WeirCore

/// Traffic over time per agent and pipeline, from the agents' heartbeats, kept in the coordinator's database
/// (no Prometheus needed, and it survives restarts). Each heartbeat's growth of the counters is added to its
/// minute, hour and day at once; minutes are kept a day, hours a month, days a year.
struct TrafficHistory: Sendable {
    let database: CoordinatorDatabase
    var sql: any SQLDatabase { database.sql }

    enum Resolution: String, CaseIterable, Sendable {
        case minute, hour, day

        var seconds: Int64 {
            switch self {
            case .minute: 60
            case .hour: 3600
            case .day: 86400
            }
        }

        /// How long its buckets are kept.
        var kept: Double {
            switch self {
            case .minute: 86400
            case .hour: 31 * 86400
            case .day: 366 * 86400
            }
        }
    }

    struct Growth: Sendable, Equatable {
        var bytesIn: Double
        var bytesOut: Double
        var connections: Double
    }

    /// What each pipeline's counters grew by since the previous heartbeat. A counter lower than before (the
    /// agent restarted) counts from zero; a pipeline seen for the first time counts all it has.
    static func growth(previous: [String: PipelineReport], current: [String: PipelineReport]) -> [String: Growth] {
        var result: [String: Growth] = [:]
        for (pipeline, now) in current {
            let before = previous[pipeline]
            func delta(_ new: Double, _ old: Double?) -> Double { guard let old, new >= old else { return max(0, new) }; return new - old }
            let growth = Growth(
                bytesIn: delta(now.bytesIn, before?.bytesIn), bytesOut: delta(now.bytesOut, before?.bytesOut),
                connections: delta(now.connectionsTotal, before?.connectionsTotal))
            if growth.bytesIn > 0 || growth.bytesOut > 0 || growth.connections > 0 { result[pipeline] = growth }
        }
        return result
    }

    func record(agent: String, time: Double, _ growth: [String: Growth]) async throws {
        for (pipeline, value) in growth {
            for resolution in Resolution.allCases {
                let bucket = Int64(time) / resolution.seconds * resolution.seconds
                try await sql.raw("""
                    INSERT INTO traffic (resolution, bucket, agent, pipeline, bytes_in, bytes_out, connections)
                    VALUES (\(bind: resolution.rawValue), \(bind: bucket), \(bind: agent), \(bind: pipeline), \(bind: value.bytesIn),
                            \(bind: value.bytesOut), \(bind: value.connections))
                    ON CONFLICT (resolution, bucket, agent, pipeline) DO UPDATE SET
                        bytes_in = traffic.bytes_in + excluded.bytes_in, bytes_out = traffic.bytes_out + excluded.bytes_out,
                        connections = traffic.connections + excluded.connections
                    """).run()
            }
        }
    }

    func prune(now: Double) async throws {
        for resolution in Resolution.allCases {
            try await sql.raw("""
                DELETE FROM traffic WHERE resolution = \(bind: resolution.rawValue) AND bucket < \(bind: Int64(now - resolution.kept))
                """).run()
            try await sql.raw("""
                DELETE FROM traffic_addresses WHERE resolution = \(bind: resolution.rawValue) AND bucket < \(bind: Int64(now - resolution.kept))
                """).run()
        }
    }

    // MARK: - Client addresses

    /// An agent's address growth as the coordinator keeps it: running pipelines only, IP addresses (or
    /// networks) only, at most `perHeartbeat` per pipeline, finite non-negative numbers — whatever an agent sent.
    static func checked(_ addresses: [String: [String: AddressGrowth]], pipelines: Set<String>, perHeartbeat: Int = 50)
        -> [String: [String: AddressGrowth]]
    {
        var result: [String: [String: AddressGrowth]] = [:]
        for (pipeline, growth) in addresses where pipelines.contains(pipeline) {
            let valid = growth.filter { address, value in
                address.utf8.count <= 64 && (try? IPNetwork.parse(address)) != nil && value.bytesIn.isFinite && value.bytesOut.isFinite
                    && value.bytesIn >= 0 && value.bytesOut >= 0 && value.bytesIn + value.bytesOut > 0
            }
            let kept = valid.sorted { $0.value.bytesIn + $0.value.bytesOut > $1.value.bytesIn + $1.value.bytesOut }.prefix(perHeartbeat)
            if !kept.isEmpty { result[pipeline] = Dictionary(uniqueKeysWithValues: kept.map { ($0.key, $0.value) }) }
        }
        return result
    }

    func recordAddresses(agent: String, time: Double, _ addresses: [String: [String: AddressGrowth]]) async throws {
        for (pipeline, growth) in addresses {
            for (address, value) in growth {
                for resolution in Resolution.allCases {
                    let bucket = Int64(time) / resolution.seconds * resolution.seconds
                    try await sql.raw("""
                        INSERT INTO traffic_addresses (resolution, bucket, agent, pipeline, address, bytes_in, bytes_out)
                        VALUES (\(bind: resolution.rawValue), \(bind: bucket), \(bind: agent), \(bind: pipeline), \(bind: address),
                                \(bind: value.bytesIn), \(bind: value.bytesOut))
                        ON CONFLICT (resolution, bucket, agent, pipeline, address) DO UPDATE SET
                            bytes_in = traffic_addresses.bytes_in + excluded.bytes_in, bytes_out = traffic_addresses.bytes_out + excluded.bytes_out
                        """).run()
                }
            }
        }
    }

    struct AddressRow: Sendable, Equatable {
        var bucket: Int64
        var agent: String
        var pipeline: String
        var address: String
        var bytesIn: Double
        var bytesOut: Double
    }

    /// Buckets of `resolution` per client address from `since`, optionally of one agent, pipeline and address.
    func addressRows(_ resolution: Resolution, since: Double, agent: String? = nil, pipeline: String? = nil, address: String? = nil)
        async throws -> [AddressRow]
    {
        var query = SQLQueryString("""
            SELECT bucket, agent, pipeline, address, bytes_in, bytes_out FROM traffic_addresses
            WHERE resolution = \(bind: resolution.rawValue) AND bucket >= \(bind: Int64(since) / resolution.seconds * resolution.seconds)
            """)
        if let agent, !agent.isEmpty { query = query + " AND agent = \(bind: agent)" }
        if let pipeline, !pipeline.isEmpty { query = query + " AND pipeline = \(bind: pipeline)" }
        if let address, !address.isEmpty { query = query + " AND address = \(bind: address)" }
        query = query + " ORDER BY bucket, agent, pipeline, address LIMIT 200000"
        return try await sql.raw(query).all().map { row in
            AddressRow(
                bucket: try row.decode(column: "bucket", as: Int64.self), agent: try row.decode(column: "agent", as: String.self),
                pipeline: try row.decode(column: "pipeline", as: String.self), address: try row.decode(column: "address", as: String.self),
                bytesIn: try row.decode(column: "bytes_in", as: Double.self), bytesOut: try row.decode(column: "bytes_out", as: Double.self))
        }
    }

    struct Row: Sendable, Equatable {
        var bucket: Int64
        var agent: String
        var pipeline: String
        var bytesIn: Double
        var bytesOut: Double
        var connections: Double
    }

    /// Buckets of `resolution` from `since`, optionally of one agent and one pipeline, oldest first.
    func rows(_ resolution: Resolution, since: Double, agent: String? = nil, pipeline: String? = nil) async throws -> [Row] {
        var query = SQLQueryString("""
            SELECT bucket, agent, pipeline, bytes_in, bytes_out, connections FROM traffic
            WHERE resolution = \(bind: resolution.rawValue) AND bucket >= \(bind: Int64(since) / resolution.seconds * resolution.seconds)
            """)
        if let agent, !agent.isEmpty { query = query + " AND agent = \(bind: agent)" }
        if let pipeline, !pipeline.isEmpty { query = query + " AND pipeline = \(bind: pipeline)" }
        query = query + " ORDER BY bucket, agent, pipeline LIMIT 200000"
        return try await sql.raw(query).all().map { row in
            Row(
                bucket: try row.decode(column: "bucket", as: Int64.self), agent: try row.decode(column: "agent", as: String.self),
                pipeline: try row.decode(column: "pipeline", as: String.self), bytesIn: try row.decode(column: "bytes_in", as: Double.self),
                bytesOut: try row.decode(column: "bytes_out", as: Double.self), connections: try row.decode(column: "connections", as: Double.self))
        }
    }

    /// Bytes (in + out) per minute of each of `agents` from `since`: agent → minute → bytes. One query for a
    /// page of agents (the fleet's sparklines).
    func minuteTotals(agents: [String], since: Double) async throws -> [String: [Int64: Double]] {
        guard !agents.isEmpty else { return [:] }
        let first = Int64(since) / 60 * 60
        var query = SQLQueryString("""
            SELECT agent, bucket, SUM(bytes_in + bytes_out) AS bytes FROM traffic
            WHERE resolution = 'minute' AND bucket >= \(bind: first) AND agent IN (
            """)
        for (index, agent) in agents.enumerated() { query = query + (index == 0 ? "" : ", ") + "\(bind: agent)" }
        query = query + ") GROUP BY agent, bucket"
        var result: [String: [Int64: Double]] = [:]
        for row in try await sql.raw(query).all() {
            result[try row.decode(column: "agent", as: String.self), default: [:]][try row.decode(column: "bucket", as: Int64.self)] =
                try row.decode(column: "bytes", as: Double.self)
        }
        return result
    }
}
