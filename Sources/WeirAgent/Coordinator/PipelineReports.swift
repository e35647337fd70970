import WeirCoordinatorProtocol

/// Reads the heartbeat's per-pipeline numbers from the Prometheus exposition the agent serves at /metrics,
/// so the coordinator sees exactly what a scrape would.
enum PipelineReports {
    static func read(exposition: [UInt8], running: [String]) -> [String: PipelineReport] {
        var reports = Dictionary(running.map { ($0, PipelineReport()) }, uniquingKeysWith: { $1 })
        for line in String(decoding: exposition, as: UTF8.self).split(separator: "\n")
        where line.hasPrefix("weir_pipeline_") || line.hasPrefix("weir_wireguard_peer_") {
            guard let sample = Sample(line), let pipeline = sample.labels["pipeline"], reports[pipeline] != nil else { continue }
            if let peer = sample.labels["peer"] {
                var report = reports[pipeline]?.peers?[peer] ?? PeerReport()
                switch sample.name {
                case "weir_wireguard_peer_receive_bytes_total": report.receiveBytes = sample.value
                case "weir_wireguard_peer_transmit_bytes_total": report.transmitBytes = sample.value
                case "weir_wireguard_peer_last_handshake_timestamp_seconds": report.lastHandshake = sample.value
                case "weir_wireguard_peer_period_bytes": report.periodBytes = sample.value
                case "weir_wireguard_peer_quota_bytes": report.quotaBytes = sample.value
                default: continue
                }
                var peers = reports[pipeline]?.peers ?? [:]
                peers[peer] = report
                reports[pipeline]?.peers = peers
                continue
            }
            switch sample.name {
            case "weir_pipeline_bytes_total":
                if sample.labels["direction"] == "in" { reports[pipeline]?.bytesIn = sample.value }
                if sample.labels["direction"] == "out" { reports[pipeline]?.bytesOut = sample.value }
            case "weir_pipeline_connections_total": reports[pipeline]?.connectionsTotal = sample.value
            case "weir_pipeline_connections_active": reports[pipeline]?.connectionsActive = sample.value
            case "weir_pipeline_errors_total": reports[pipeline]?.errorsTotal += sample.value
            default: break
            }
        }
        return reports
    }

    /// `name{label="value",...} 123`
    struct Sample {
        let name: String
        let labels: [String: String]
        let value: Double

        init?(_ line: Substring) {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { return nil }
            let series = line[..<space]
            self.value = value
            guard let brace = series.firstIndex(of: "{"), series.last == "}" else {
                name = String(series)
                labels = [:]
                return
            }
            name = String(series[..<brace])
            var labels: [String: String] = [:]
            // Label values here are pipeline ids, peer names and fixed words: no escaped quotes or commas inside.
            for pair in series[series.index(after: brace)..<series.index(before: series.endIndex)].split(separator: ",") {
                let parts = pair.split(separator: "=", maxSplits: 1)
                guard parts.count == 2 else { continue }
                labels[String(parts[0])] = String(parts[1].trimmingCharacters(in: ["\""]))
            }
            self.labels = labels
        }
    }
}
