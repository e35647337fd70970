import NIOConcurrencyHelpers
import WeirCoordinatorProtocol

/// Per-client-address traffic for the coordinator's history, from count.ebpf's per-IP counters
/// (`weir_ip_bytes_total`, summed over interfaces). The agent sends what each address grew by since the
/// coordinator last got it — not totals — so the history holds when an address drops out of count.ebpf's
/// top_n and comes back, when the map evicts it and its counter starts again, or when the agent restarts
/// with its pinned map (its first reading is the baseline: what came before it is not in the history). Each heartbeat carries the busiest addresses
/// only; the others' growth waits for a later one (their baseline is not advanced), so none is lost. The
/// baseline moves only once a heartbeat was sent: growth during a coordinator outage arrives afterwards.
final class ClientAddressTraffic: Sendable {
    /// Addresses per pipeline in one heartbeat.
    static let perHeartbeat = 50
    /// Addresses remembered per pipeline; past it the pipeline starts again from a new baseline.
    static let remembered = 100_000

    struct Totals: Equatable {
        var bytesIn: Double
        var bytesOut: Double
    }

    typealias Counters = [String: [String: Totals]]

    private let baseline = NIOLockedValueBox<Counters?>(nil)

    /// pipeline → address → totals, for the running pipelines; the `ip="other"` roll-up is no address.
    static func totals(exposition: [UInt8], running: Set<String>) -> Counters {
        var result: Counters = [:]
        for line in String(decoding: exposition, as: UTF8.self).split(separator: "\n") where line.hasPrefix("weir_ip_bytes_total{") {
            guard let sample = PipelineReports.Sample(line), let pipeline = sample.labels["pipeline"], running.contains(pipeline),
                let address = sample.labels["ip"], address != "other"
            else { continue }
            var totals = result[pipeline]?[address] ?? Totals(bytesIn: 0, bytesOut: 0)
            switch sample.labels["direction"] {
            case "in": totals.bytesIn += sample.value
            case "out": totals.bytesOut += sample.value
            default: continue
            }
            result[pipeline, default: [:]][address] = totals
        }
        return result
    }

    /// What to send for `current`, and the baseline to keep once it is sent.
    static func growth(current: Counters, baseline: Counters?, limit: Int = perHeartbeat) -> (growth: [String: [String: AddressGrowth]], next: Counters) {
        // The agent's first reading is the baseline: a map pinned before a restart holds counts already sent.
        guard let baseline else { return ([:], current) }
        var growth: [String: [String: AddressGrowth]] = [:]
        var next: Counters = [:]
        for (pipeline, addresses) in current {
            // A pipeline seen for the first time since (a new stage, or its first client) counts all it has.
            let base = baseline[pipeline] ?? [:]
            guard base.count <= Self.remembered else {
                next[pipeline] = addresses
                continue
            }
            var kept = base
            var grown: [(address: String, growth: AddressGrowth, now: Totals)] = []
            for (address, now) in addresses {
                let old = base[address]
                // A counter lower than before started again (evicted from the map, the stage made anew).
                func delta(_ new: Double, _ old: Double?) -> Double { guard let old, new >= old else { return new }; return new - old }
                let change = AddressGrowth(bytesIn: delta(now.bytesIn, old?.bytesIn), bytesOut: delta(now.bytesOut, old?.bytesOut))
                if change.bytesIn + change.bytesOut > 0 {
                    grown.append((address, change, now))
                } else {
                    kept[address] = now
                }
            }
            grown.sort { ($0.growth.bytesIn + $0.growth.bytesOut, $1.address) > ($1.growth.bytesIn + $1.growth.bytesOut, $0.address) }
            for entry in grown.prefix(limit) {
                growth[pipeline, default: [:]][entry.address] = entry.growth
                kept[entry.address] = entry.now
            }
            next[pipeline] = kept
        }
        return (growth, next)
    }

    /// The growth for this heartbeat and a commit to call once it was sent.
    func pending(exposition: [UInt8], running: [String]) -> (growth: [String: [String: AddressGrowth]], commit: @Sendable () -> Void) {
        let current = Self.totals(exposition: exposition, running: Set(running))
        let (growth, next) = Self.growth(current: current, baseline: baseline.withLockedValue { $0 })
        return (growth, { [baseline] in baseline.withLockedValue { $0 = next } })
    }
}
