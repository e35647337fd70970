import NIOConcurrencyHelpers

/// Answers kept for their TTL (clamped to min/max), at most `capacity` of them: when full, the entry that
/// expires first among a small sample is evicted — no per-hit bookkeeping, so a hit costs one lookup and a
/// copy. Served answers get their TTLs lowered by their age; SERVFAIL is never stored.
final class DNSCache: Sendable {
    struct Key: Hashable, Sendable {
        var question: DNSWire.Question
    }

    struct Entry: Sendable {
        var bytes: [UInt8]
        var ttlOffsets: [Int]
        var stored: ContinuousClock.Instant
        var expires: ContinuousClock.Instant
    }

    private let capacity: Int
    private let minTTL: UInt32
    private let maxTTL: UInt32
    private let entries = NIOLockedValueBox<[Key: Entry]>([:])

    init(capacity: Int, minTTL: UInt32, maxTTL: UInt32) {
        self.capacity = capacity
        self.minTTL = minTTL
        self.maxTTL = maxTTL
    }

    var count: Int { entries.withLockedValue { $0.count } }

    /// The cached answer with `id` and aged TTLs, or nil.
    func answer(_ question: DNSWire.Question, id: UInt16, now: ContinuousClock.Instant = .now) -> [UInt8]? {
        guard capacity > 0 else { return nil }
        let entry: Entry? = entries.withLockedValue { entries in
            guard let entry = entries[Key(question: question)] else { return nil }
            if entry.expires <= now {
                entries[Key(question: question)] = nil
                return nil
            }
            return entry
        }
        guard let entry else { return nil }
        let age = UInt32((now - entry.stored).components.seconds)
        return DNSWire.served(entry.bytes, id: id, ttlOffsets: entry.ttlOffsets, age: age)
    }

    /// Stores an upstream's answer (NOERROR or NXDOMAIN) for its lowest TTL, clamped.
    func store(_ question: DNSWire.Question, bytes: [UInt8], response: DNSWire.Response, now: ContinuousClock.Instant = .now) {
        guard capacity > 0, !response.truncated,
            response.responseCode == DNSWire.ResponseCode.noError || response.responseCode == DNSWire.ResponseCode.nameError
        else { return }
        // An answer without records (NODATA without SOA) is kept for the minimum, at least a few seconds.
        let ttl = min(max(response.minimumTTL ?? 5, minTTL), maxTTL)
        guard ttl > 0 else { return }
        let entry = Entry(bytes: bytes, ttlOffsets: response.ttlOffsets, stored: now, expires: now + .seconds(Int(ttl)))
        entries.withLockedValue { entries in
            if entries.count >= capacity, entries[Key(question: question)] == nil {
                // Sample a few entries (dictionary order is arbitrary) and evict the one expiring first.
                var victim: (Key, ContinuousClock.Instant)?
                for (key, value) in entries.prefix(8) where victim == nil || value.expires < victim!.1 { victim = (key, value.expires) }
                if let victim { entries[victim.0] = nil }
            }
            entries[Key(question: question)] = entry
        }
    }
}
