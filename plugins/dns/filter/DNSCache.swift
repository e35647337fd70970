import NIOConcurrencyHelpers
import WeirCore

/// Answers kept for their TTL (clamped to min/max), at most `capacity` of them: when full, the entry that
/// expires first among a small sample is evicted. Served answers get their TTLs lowered by their age;
/// SERVFAIL is never stored. With `staleWindow`, an expired answer is kept that much longer, for when every
/// upstream fails (RFC 8767: served with TTL 30); with `prefetch`, a name asked again in the last tenth of
/// its TTL (at least its last second) is refreshed once in the background, so popular names never miss.
final class DNSCache: Sendable {
    struct Key: Hashable, Sendable {
        var question: DNSWire.Question
    }

    /// A class, so a hit touches one reference rather than copying the answer's arrays in and out of the
    /// dictionary; its counters change only under the cache's lock.
    final class Entry: @unchecked Sendable {
        let bytes: [UInt8]
        let ttlOffsets: [Int]
        let stored: ContinuousClock.Instant
        let expires: ContinuousClock.Instant
        /// Hits since it was stored, and whether a refresh is under way.
        var hits = 0
        var prefetching = false

        init(bytes: [UInt8], ttlOffsets: [Int], stored: ContinuousClock.Instant, expires: ContinuousClock.Instant) {
            self.bytes = bytes
            self.ttlOffsets = ttlOffsets
            self.stored = stored
            self.expires = expires
        }
    }

    /// A fresh answer — the stored one, served with the query's id and TTLs lowered by its age — and whether
    /// the caller should refresh it now (prefetch). It is copied only where it goes: into a new array (`bytes`)
    /// or straight into a datagram's send buffer (`write`).
    struct Hit {
        let entry: Entry
        let id: UInt16
        let age: UInt32
        let prefetch: Bool

        var count: Int { entry.bytes.count }

        var bytes: [UInt8] { DNSWire.served(entry.bytes, id: id, ttlOffsets: entry.ttlOffsets, age: age) }

        /// Writes the answer at the start of `buffer`; its length, or nil when it does not fit.
        func write(into buffer: UnsafeMutableRawBufferPointer) -> Int? {
            let count = entry.bytes.count
            guard count >= 12, count <= buffer.count, let base = buffer.baseAddress else { return nil }
            entry.bytes.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: count) }
            DNSWire.serve(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]), id: id, ttlOffsets: entry.ttlOffsets, age: age)
            return count
        }
    }

    /// The TTL of stale answers (RFC 8767's recommendation).
    static let staleTTL: UInt32 = 30

    private let capacity: Int
    private let minTTL: UInt32
    private let maxTTL: UInt32
    private let staleWindow: Duration
    private let prefetch: Bool
    private let entries = NIOLockedValueBox<[Key: Entry]>([:])

    init(capacity: Int, minTTL: UInt32, maxTTL: UInt32, staleWindow: Duration = .zero, prefetch: Bool = false) {
        self.capacity = capacity
        self.minTTL = minTTL
        self.maxTTL = maxTTL
        self.staleWindow = staleWindow
        self.prefetch = prefetch
    }

    var count: Int { entries.withLockedValue { $0.count } }

    /// The cached answer with `id` and aged TTLs, and whether to prefetch it; nil when absent or expired.
    func lookup(_ question: DNSWire.Question, id: UInt16, now: ContinuousClock.Instant = .now) -> Hit? {
        guard capacity > 0 else { return nil }
        let key = Key(question: question)
        let found: (entry: Entry, refresh: Bool)? = entries.withLockedValue { entries in
            guard let entry = entries[key] else { return nil }
            if entry.expires <= now {
                if entry.expires + staleWindow <= now { entries[key] = nil }
                return nil
            }
            entry.hits += 1
            let refresh = prefetch && !entry.prefetching && entry.hits >= 2 && entry.expires - now <= max((entry.expires - entry.stored) / 10, .seconds(1))
            if refresh { entry.prefetching = true }
            return (entry, refresh)
        }
        guard let (entry, refresh) = found else { return nil }
        return Hit(entry: entry, id: id, age: UInt32((now - entry.stored).components.seconds), prefetch: refresh)
    }

    /// An expired answer still inside the stale window, with `id` and every TTL 30 s; for when no upstream answers.
    func stale(_ question: DNSWire.Question, id: UInt16, now: ContinuousClock.Instant = .now) -> [UInt8]? {
        guard capacity > 0, staleWindow > .zero else { return nil }
        let entry: Entry? = entries.withLockedValue { entries in
            guard let entry = entries[Key(question: question)], entry.expires + staleWindow > now else { return nil }
            return entry
        }
        guard let entry else { return nil }
        return DNSWire.served(entry.bytes, id: id, ttlOffsets: entry.ttlOffsets, age: UInt32.max / 2, floor: Self.staleTTL)
    }

    /// A refresh that failed: the entry may be prefetched again.
    func prefetchFailed(_ question: DNSWire.Question) {
        entries.withLockedValue { entries in entries[Key(question: question)]?.prefetching = false }
    }

    /// Whether an answer is kept: NOERROR or NXDOMAIN, whole.
    private func keeps(_ response: DNSWire.Response) -> Bool {
        capacity > 0 && !response.truncated
            && (response.responseCode == DNSWire.ResponseCode.noError || response.responseCode == DNSWire.ResponseCode.nameError)
    }

    /// An upstream's answer as the cache keeps and gives it: every TTL within min_ttl...max_ttl, so a client
    /// told to keep it does not keep it longer than the cache (max_ttl 60 s is 60 s for the client too).
    func clamped(_ bytes: [UInt8], response: DNSWire.Response) -> [UInt8] {
        guard keeps(response), minTTL <= maxTTL else { return bytes }
        return DNSWire.clampingTTLs(bytes, ttlOffsets: response.ttlOffsets, to: minTTL...maxTTL)
    }

    /// Stores an upstream's answer (NOERROR or NXDOMAIN) for its lowest TTL, clamped, with its TTLs clamped;
    /// the answer as clients get it (`clamped`), whether stored or not.
    @discardableResult
    func store(_ question: DNSWire.Question, bytes: [UInt8], response: DNSWire.Response, now: ContinuousClock.Instant = .now) -> [UInt8] {
        guard keeps(response) else { return bytes }
        let bytes = clamped(bytes, response: response)
        // An answer without records (NODATA without SOA) is kept for the minimum, at least a few seconds.
        let ttl = min(max(response.minimumTTL ?? 5, minTTL), maxTTL)
        guard ttl > 0 else { return bytes }
        let entry = Entry(bytes: bytes, ttlOffsets: response.ttlOffsets, stored: now, expires: now + .seconds(Int(ttl)))
        entries.withLockedValue { entries in
            if entries.count >= capacity, entries[Key(question: question)] == nil {
                // Sample a few entries (dictionary order is arbitrary) and evict the one expiring first (stale ones first of all).
                var victim: (Key, ContinuousClock.Instant)?
                for (key, value) in entries.prefix(8) where victim == nil || value.expires < victim!.1 { victim = (key, value.expires) }
                if let victim { entries[victim.0] = nil }
            }
            entries[Key(question: question)] = entry
        }
        return bytes
    }
}
