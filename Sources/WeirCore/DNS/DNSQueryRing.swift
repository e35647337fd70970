import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// One answered query as a DNS stage saw it. Kept raw (the client as bytes, the time as seconds) because
/// most events are overwritten before anyone reads them: text is made when they are read.
public struct DNSQueryEvent: Sendable {
    /// Unix seconds.
    public var time: Double
    public var client: DNSClient
    public var name: String
    public var type: UInt16
    /// allowed, blocked, cached, servfail or refused.
    public var result: String
    /// What decided: `list:line`, canary, records, serve_stale, max_inflight…
    public var rule: String?
    /// The upstream that answered.
    public var upstream: String?
    /// From the query's arrival to its answer.
    public var latency: Duration

    public init(time: Double, client: DNSClient, name: String, type: UInt16, result: String, rule: String?, upstream: String?, latency: Duration) {
        self.time = time
        self.client = client
        self.name = name
        self.type = type
        self.result = result
        self.rule = rule
        self.upstream = upstream
        self.latency = latency
    }

    public var clientText: String { client.text }

    /// The type's mnemonic (A, AAAA, HTTPS…), else TYPEn (RFC 3597).
    public var typeText: String { DNSWire.typeName(type) }

    /// ISO 8601 in UTC with milliseconds and the zone (Z).
    public var timeText: String { Date.ISO8601FormatStyle(includingFractionalSeconds: true).format(Date(timeIntervalSince1970: time)) }

    /// Milliseconds, two decimals.
    public var milliseconds: Double {
        let seconds = Double(latency.components.seconds) + Double(latency.components.attoseconds) / 1e18
        return (seconds * 100_000).rounded() / 100
    }
}

/// What a reader of the ring asks for: the newest `limit` events that match.
public struct DNSQueryFilter: Sendable {
    /// Part of the name or of the client's address (case-insensitive).
    public var search: String?
    public var result: String?
    public var limit: Int

    public init(search: String? = nil, result: String? = nil, limit: Int = 100) {
        self.search = search?.lowercased()
        self.result = result
        self.limit = limit
    }

    func matches(_ event: DNSQueryEvent) -> Bool {
        if let result, event.result != result { return false }
        if let search, !event.name.contains(search), !event.clientText.contains(search) { return false }
        return true
    }
}

/// The last `capacity` answers of one DNS stage, newest overwriting oldest: memory is bounded by the
/// capacity whatever the query rate. Written by every event loop that answers (one short lock per answer),
/// read by the agent when the coordinator asks.
public final class DNSQueryRing: Sendable {
    private struct Storage {
        var events: ContiguousArray<DNSQueryEvent> = []
        /// Where the next event goes once the ring is full.
        var next = 0
    }

    private let storage: NIOLockedValueBox<Storage>

    /// `capacity` is at least 1.
    public init(capacity: Int) {
        self.capacity = max(1, capacity)
        var storage = Storage()
        storage.events.reserveCapacity(min(self.capacity, 4096))
        self.storage = NIOLockedValueBox(storage)
    }

    public let capacity: Int

    public func append(_ event: DNSQueryEvent) { append(contentsOf: CollectionOfOne(event)) }

    /// Several events under one lock (a UDP batch's answers).
    public func append(contentsOf events: some Collection<DNSQueryEvent>) {
        storage.withLockedValue { storage in
            for event in events {
                if storage.events.count < capacity {
                    storage.events.append(event)
                } else {
                    storage.events[storage.next] = event
                    storage.next = (storage.next + 1) % capacity
                }
            }
        }
    }

    /// Newest first. The reader shares the array (copy-on-write) and filters outside the lock; the next
    /// append copies it once — at most `capacity` events per read, which is rare (an operator looking).
    public func events(_ filter: DNSQueryFilter) -> [DNSQueryEvent] {
        let (events, next) = storage.withLockedValue { ($0.events, $0.next) }
        var found: [DNSQueryEvent] = []
        found.reserveCapacity(min(filter.limit, events.count))
        for offset in 0..<events.count {
            let event = events[(next - 1 - offset + 2 * events.count) % events.count]
            if filter.matches(event) {
                found.append(event)
                if found.count >= filter.limit { break }
            }
        }
        return found
    }
}

/// The query rings of this process's DNS stages, by pipeline. A stage's successor (a reload) installs its
/// own ring with the events of the one it replaces; a removed pipeline's ring goes with it.
public final class DNSQueryLogs: Sendable {
    public static let shared = DNSQueryLogs()

    private let rings = NIOLockedValueBox<[String: DNSQueryRing]>([:])

    public init() {}

    /// Makes `ring` the pipeline's, holding the newest events of the ring it replaces that fit.
    public func install(_ ring: DNSQueryRing, for pipeline: String) {
        let previous = rings.withLockedValue { rings in
            defer { rings[pipeline] = ring }
            return rings[pipeline]
        }
        guard let previous, previous !== ring else { return }
        for event in previous.events(DNSQueryFilter(limit: ring.capacity)).reversed() { ring.append(event) }
    }

    /// Forgets the pipeline's ring if it is still `ring` (not a successor's).
    public func remove(_ ring: DNSQueryRing?, for pipeline: String) {
        rings.withLockedValue { rings in
            if ring == nil || rings[pipeline] === ring { rings[pipeline] = nil }
        }
    }

    /// Pipelines with a ring, sorted.
    public var pipelines: [String] { rings.withLockedValue { $0.keys.sorted() } }

    public func ring(of pipeline: String) -> DNSQueryRing? { rings.withLockedValue { $0[pipeline] } }
}
