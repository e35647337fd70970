import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// Traffic per destination of one pipeline — the name a client asked for (SOCKS5, HTTP CONNECT, TLS SNI, an
/// AEAD address header) — as `weir_destination_bytes_total{pipeline,destination,direction}` and
/// `weir_destination_connections_total{pipeline,destination}`, for at most `limit` destinations; the rest are
/// `destination="other"`. Memory is bounded: `limit` shown destinations, `candidateLimit` more followed
/// without series of their own (their traffic is in `other`), and beyond that one shared overflow slot.
///
/// Which destinations are shown follows their traffic: every `rebalanceInterval`, a followed destination that
/// moved more than twice as many bytes as the quietest shown one since the last look takes its place. Every
/// series only grows, and all of them together always equal the bytes of the connections counted: a
/// destination leaving the shown set hands what its series showed to `other` (whose series jumps by that
/// much), and one joining starts its series at zero (what it moved before stays in `other`).
public final class DestinationTraffic: ScrapeCollector {
    /// What one destination's connections count into. Shared by its connections, across event loops.
    public final class Slot: Sendable {
        public let name: String
        fileprivate let bytesIn = Atomic<UInt64>(0)
        fileprivate let bytesOut = Atomic<UInt64>(0)
        fileprivate let connections = Atomic<UInt64>(0)
        /// Connections counting into the slot now; a followed slot is dropped only when none are.
        fileprivate let open = Atomic<Int>(0)

        init(name: String) { self.name = name }

        /// Bytes from the client to the destination.
        public func addIn(_ count: Int) { bytesIn.add(UInt64(count), ordering: .relaxed) }
        /// Bytes from the destination to the client.
        public func addOut(_ count: Int) { bytesOut.add(UInt64(count), ordering: .relaxed) }

        fileprivate var totals: Totals {
            Totals(bytesIn: bytesIn.load(ordering: .relaxed), bytesOut: bytesOut.load(ordering: .relaxed),
                   connections: connections.load(ordering: .relaxed))
        }
    }

    struct Totals: Equatable {
        var bytesIn: UInt64 = 0
        var bytesOut: UInt64 = 0
        var connections: UInt64 = 0
        var bytes: UInt64 { bytesIn &+ bytesOut }

        static func + (a: Totals, b: Totals) -> Totals {
            Totals(bytesIn: a.bytesIn &+ b.bytesIn, bytesOut: a.bytesOut &+ b.bytesOut, connections: a.connections &+ b.connections)
        }
        static func - (a: Totals, b: Totals) -> Totals {
            Totals(bytesIn: a.bytesIn &- b.bytesIn, bytesOut: a.bytesOut &- b.bytesOut, connections: a.connections &- b.connections)
        }
    }

    private struct Entry {
        let slot: Slot
        /// What of the slot's totals belongs to `other` (it moved them before its series began).
        var offset: Totals
        /// The totals at the last rebalance, for "bytes since".
        var seen: Totals
    }

    private struct State {
        var shown: [String: Entry] = [:]
        var followed: [String: Entry] = [:]
        /// `other`'s part that no slot holds any more (folded in when a slot changed sides or was dropped).
        var base = Totals()
        var lastRebalance: NIODeadline
    }

    static let bytesFamily = MetricFamily(
        "weir_destination_bytes_total", .counter,
        help: "Bytes per destination a client asked for (in: client to destination); the busiest destinations, the rest as destination=\"other\".")
    static let connectionsFamily = MetricFamily(
        "weir_destination_connections_total", .counter, help: "Connections per destination a client asked for; as weir_destination_bytes_total.")

    public let pipeline: String
    public let limit: Int
    public let candidateLimit: Int
    private let rebalanceInterval: TimeAmount
    private let state: NIOLockedValueBox<State>
    /// New destinations when every followed one still has open connections.
    private let overflow = Slot(name: "other")
    private let exported = Atomic<Bool>(false)

    public init(pipeline: String, limit: Int, candidateLimit: Int? = nil, rebalanceInterval: TimeAmount = .seconds(10)) {
        self.pipeline = pipeline
        self.limit = max(1, limit)
        self.candidateLimit = candidateLimit ?? max(1_000, 10 * limit)
        self.rebalanceInterval = rebalanceInterval
        state = NIOLockedValueBox(State(lastRebalance: .now()))
    }

    /// True the first time only: the caller adds the table to the scrape collectors then.
    func firstUse() -> Bool {
        !exported.load(ordering: .relaxed) && exported.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
    }

    /// A connection to `name` begins: the slot its bytes go to. Call `closed` with it when the connection ends.
    public func opened(_ name: String) -> Slot {
        let slot = state.withLockedValue { state -> Slot in
            // A destination called "other" would share its series with the rest: it is part of the rest.
            if name == "other" { return overflow }
            if let entry = state.shown[name] ?? state.followed[name] { return entry.slot }
            let slot = Slot(name: name)
            if state.shown.count < limit {
                state.shown[name] = Entry(slot: slot, offset: Totals(), seen: Totals())
                return slot
            }
            if state.followed.count >= candidateLimit {
                // Make room by dropping a followed destination without open connections; its bytes stay in other.
                guard let idle = state.followed.first(where: { $0.value.slot.open.load(ordering: .relaxed) == 0 }) else { return overflow }
                state.base = state.base + (idle.value.slot.totals - idle.value.offset)
                state.followed[idle.key] = nil
            }
            state.followed[name] = Entry(slot: slot, offset: Totals(), seen: Totals())
            return slot
        }
        slot.open.add(1, ordering: .relaxed)
        slot.connections.add(1, ordering: .relaxed)
        return slot
    }

    public func closed(_ slot: Slot) {
        slot.open.subtract(1, ordering: .relaxed)
    }

    /// Swaps followed destinations that moved more bytes since the last look for shown ones that moved fewer.
    func rebalance() {
        state.withLockedValue { state in
            var followed = state.followed.map { (name: $0.key, totals: $0.value.slot.totals, since: $0.value.slot.totals - $0.value.seen) }
            var shown = state.shown.map { (name: $0.key, totals: $0.value.slot.totals, since: $0.value.slot.totals - $0.value.seen) }
            followed.sort { $0.since.bytes > $1.since.bytes }
            shown.sort { $0.since.bytes < $1.since.bytes }
            for (rising, falling) in zip(followed, shown) {
                guard rising.since.bytes > 0, rising.since.bytes > 2 * falling.since.bytes else { break }
                // Both hand what their series showed so far to other; each starts counting on its new side.
                var up = state.followed.removeValue(forKey: rising.name)!
                var down = state.shown.removeValue(forKey: falling.name)!
                state.base = state.base + (rising.totals - up.offset) + (falling.totals - down.offset)
                up.offset = rising.totals
                down.offset = falling.totals
                state.shown[rising.name] = up
                state.followed[falling.name] = down
            }
            for name in Array(state.shown.keys) { state.shown[name]!.seen = state.shown[name]!.slot.totals }
            for name in Array(state.followed.keys) { state.followed[name]!.seen = state.followed[name]!.slot.totals }
            state.lastRebalance = .now()
        }
    }

    /// The shown destinations' series and `other`, as counted now.
    func series() -> (shown: [(name: String, totals: Totals)], other: Totals) {
        state.withLockedValue { state in
            let shown = state.shown.map { (name: $0.key, totals: $0.value.slot.totals - $0.value.offset) }.sorted { $0.name < $1.name }
            let other = state.followed.values.reduce(state.base + overflow.totals) { $0 + ($1.slot.totals - $1.offset) }
            return (shown, other)
        }
    }

    /// Destinations with a slot (shown and followed): what the memory bound is about.
    var tracked: Int { state.withLockedValue { $0.shown.count + $0.followed.count } }

    public func collect(into exposition: inout ExpositionWriter) {
        if state.withLockedValue({ NIODeadline.now() - $0.lastRebalance >= rebalanceInterval }) { rebalance() }
        let (shown, other) = series()
        let rows = shown + [(name: "other", totals: other)]
        let pipeline = self.pipeline
        exposition.write(Self.bytesFamily) { body in
            for row in rows {
                for (direction, value) in [("in", row.totals.bytesIn), ("out", row.totals.bytesOut)] {
                    var labels: [UInt8] = []
                    labels.appendLabel("pipeline", pipeline)
                    labels.append(UInt8(ascii: ","))
                    labels.appendLabel("destination", row.name)
                    labels.append(UInt8(ascii: ","))
                    labels.appendLabel("direction", direction)
                    body.appendSample(Array(Self.bytesFamily.name.utf8), labels: labels, value: value)
                }
            }
        }
        exposition.write(Self.connectionsFamily) { body in
            for row in rows {
                var labels: [UInt8] = []
                labels.appendLabel("pipeline", pipeline)
                labels.append(UInt8(ascii: ","))
                labels.appendLabel("destination", row.name)
                body.appendSample(Array(Self.connectionsFamily.name.utf8), labels: labels, value: row.totals.connections)
            }
        }
    }
}
