import CWeirNetlink
import Foundation
import Logging
import NIOConcurrencyHelpers
import WeirCore

/// The (client . destination) pairs that `domains_from` entries allow: filled from dns.filter answers before
/// they are released, each for its TTL plus `follow_grace` (an element timeout, so the kernel expires it even
/// while the agent is down), and kept while conntrack still holds a connection of the pair. Bounded by
/// `max_elements` per family: when full, the pair closest to expiry without a connection is evicted; when
/// every pair has one, the answer is refused (and counted).
final class FollowedAddresses: Sendable {
    typealias Config = EnforceNftablesConfig

    private let owner: String
    private let grace: Duration
    private let capacity: Int
    private let logger: Logger

    struct Counts: Sendable {
        var admitted = 0
        var refused = 0
        var evicted = 0
        var kept = 0
        var failed = 0
    }

    /// Each pair's expiry, kept per family so a family's count is no walk over the other's pairs.
    struct PairExpiries {
        /// By key length: 8 (IPv4 client . destination) or 32 (IPv6).
        private var families: [Int: [[UInt8]: ContinuousClock.Instant]] = [:]

        subscript(key: [UInt8]) -> ContinuousClock.Instant? {
            get { families[key.count]?[key] }
            set { families[key.count, default: [:]][key] = newValue }
        }

        /// The pairs of one family (`length` key bytes).
        func family(_ length: Int) -> [[UInt8]: ContinuousClock.Instant] { families[length] ?? [:] }

        /// Forgets the pairs the kernel has expired by `now`; returns the keys expiring by `horizon`.
        mutating func expire(now: ContinuousClock.Instant, due horizon: ContinuousClock.Instant) -> [[UInt8]] {
            families = families.mapValues { $0.filter { $0.value > now } }
            return families.values.flatMap { $0.filter { $0.value <= horizon }.map(\.key) }
        }
    }

    private struct State {
        var expiries = PairExpiries()
        var counts = Counts()
    }

    /// One lock for the map and the kernel writes: two answers never plan against each other.
    private let state = NIOLockedValueBox(State())

    init(owner: String, allowlist: Config.DestinationAllowlist, logger: Logger) {
        self.owner = owner
        self.grace = allowlist.followGrace
        self.capacity = allowlist.maxElements
        self.logger = logger
    }

    var counts: Counts { state.withLockedValue { $0.counts } }
    var elements: (ipv4: Int, ipv6: Int) {
        state.withLockedValue { state in
            (state.expiries.family(8).count, state.expiries.family(32).count)
        }
    }

    /// Reads the pairs already in the kernel (a reload or restart keeps them, with their timeouts).
    func load() {
        let now = ContinuousClock.now
        var expiries = PairExpiries()
        for ipv4 in [true, false] {
            for element in (try? NftablesTable.shared.listKeys(owner: owner, NftCompiler.followSet(ipv4: ipv4))) ?? [] {
                expiries[element.key] = now + .milliseconds(Int64(element.expiresMs))
            }
        }
        state.withLockedValue { $0.expiries = expiries }
    }

    /// Takes an answer's addresses for its client, when `rule` follows it. False: refused (full of live pairs)
    /// or the kernel did not take them.
    func admit(_ answer: ResolvedAnswer, rule: Config.FollowedDNS) -> Bool {
        guard rule.follows(name: answer.name, group: answer.group) else { return true }
        let now = ContinuousClock.now
        var wanted: [([UInt8], ContinuousClock.Instant)] = []
        for address in answer.addresses where address.bytes.count == answer.client.count {
            // Answers pointing at private addresses (DNS rebinding) open nothing unless the entry allows it.
            guard rule.allowPrivate || IPNetwork(bytes: address.bytes, prefix: address.bytes.count * 8).isPublic else { continue }
            wanted.append((answer.client + address.bytes, now + .seconds(Int64(address.ttl)) + grace))
        }
        guard !wanted.isEmpty else { return true }
        return state.withLockedValue { state -> Bool in
            let needed = wanted.filter { key, until in (state.expiries[key] ?? now) < until }
            guard !needed.isEmpty else { return true }
            var evicting: [[UInt8]] = []
            for ipv4 in [true, false] {
                let length = ipv4 ? 8 : 32
                let new = needed.filter { $0.0.count == length && state.expiries[$0.0] == nil }.count
                let present = state.expiries.family(length).count
                let over = present + new - capacity
                guard over > 0 else { continue }
                let victims = evictable(state.expiries.family(length), count: over)
                guard victims.count == over else {
                    state.counts.refused += 1
                    logger.warning(
                        "domains_from: the allowlist is full of pairs with live connections; answer refused",
                        metadata: ["name": "\(answer.name)", "max_elements": "\(capacity)"])
                    return false
                }
                evicting += victims
            }
            do {
                try write(needed, replacing: needed.map(\.0).filter { (state.expiries[$0] ?? now) > now + .seconds(1) } + evicting, now: now)
            } catch {
                state.counts.failed += 1
                logger.error("domains_from: the kernel refused the answer's addresses", metadata: ["name": "\(answer.name)", "error": "\(error)"])
                return false
            }
            for key in evicting { state.expiries[key] = nil }
            for (key, until) in needed { state.expiries[key] = until }
            state.counts.admitted += 1
            state.counts.evicted += evicting.count
            return true
        }
    }

    /// `count` pairs of one family, closest to expiry first, that no tracked connection uses; fewer when
    /// there are not that many.
    private func evictable(_ family: [[UInt8]: ContinuousClock.Instant], count: Int) -> [[UInt8]] {
        let live = Self.livePairs()
        var victims: [[UInt8]] = []
        for (key, _) in family.sorted(by: { $0.value < $1.value }) where !live.contains(key) {
            victims.append(key)
            if victims.count == count { break }
        }
        return victims
    }

    /// Writes `pairs` with their timeouts; `replacing` (present in the kernel) are deleted in the same
    /// transaction first, as adding an element that exists does not change its timeout on every kernel.
    private func write(_ pairs: [([UInt8], ContinuousClock.Instant)], replacing: [[UInt8]], now: ContinuousClock.Instant) throws {
        var changes: [NftablesTable.ElementChange] = []
        for ipv4 in [true, false] {
            let length = ipv4 ? 8 : 32
            let adding = pairs.filter { $0.0.count == length }
            let removing = replacing.filter { $0.count == length }
            guard !adding.isEmpty || !removing.isEmpty else { continue }
            changes.append((
                NftCompiler.followSet(ipv4: ipv4), adding.map { NftablesTable.key($0.0) },
                adding.map { UInt64(max(1, Self.milliseconds($0.1 - now))) }, removing.map(NftablesTable.key)
            ))
        }
        do {
            try NftablesTable.shared.changeElements(owner: owner, changes)
        } catch where !replacing.isEmpty {
            // A pair that expired in the kernel between our look and the write makes its deletion fail: add only.
            try NftablesTable.shared.changeElements(owner: owner, changes.map { ($0.set, $0.add, $0.timeoutsMs, []) })
        }
    }

    /// Extends the pairs about to expire that a tracked connection still uses; forgets the expired ones.
    /// `horizon`: how far ahead "about to expire" looks (the keep-alive loop's period, twice).
    func keepLive(horizon: Duration) {
        let now = ContinuousClock.now
        let due = state.withLockedValue { $0.expiries.expire(now: now, due: now + horizon) }
        guard !due.isEmpty else { return }
        let live = Self.livePairs()
        let keep = due.filter(live.contains)
        guard !keep.isEmpty else { return }
        state.withLockedValue { state in
            let until = now + max(grace, horizon * 2)
            let present = keep.filter { (state.expiries[$0] ?? now) > now + .seconds(1) }
            do {
                try write(keep.map { ($0, until) }, replacing: present, now: now)
                for key in keep { state.expiries[key] = until }
                state.counts.kept += keep.count
            } catch {
                state.counts.failed += 1
                logger.error("domains_from: extending pairs with live connections failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// (source . destination) of every tracked connection, as set keys.
    static func livePairs() -> Set<[UInt8]> {
        var pairs: UnsafeMutablePointer<weir_ct_pair>?
        var count = 0
        guard weir_conntrack_pairs(&pairs, &count) == 0 else { return [] }
        defer { free(pairs) }
        var keys = Set<[UInt8]>()
        for index in 0..<count {
            var pair = pairs![index]
            let length = Int(pair.len)
            let source = withUnsafeBytes(of: &pair.src) { Array($0.prefix(length)) }
            let destination = withUnsafeBytes(of: &pair.dst) { Array($0.prefix(length)) }
            keys.insert(source + destination)
        }
        return keys
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000
    }
}

/// Registered with the dns.filter pipeline it follows; hands that pipeline's answers to the stage's pairs
/// with the entry's scope.
final class FollowedPipeline: ResolvedAnswerFollower {
    let rule: EnforceNftablesConfig.FollowedDNS
    let addresses: FollowedAddresses

    init(rule: EnforceNftablesConfig.FollowedDNS, addresses: FollowedAddresses) {
        self.rule = rule
        self.addresses = addresses
    }

    func admit(_ answer: ResolvedAnswer) async -> Bool { addresses.admit(answer, rule: rule) }
}
