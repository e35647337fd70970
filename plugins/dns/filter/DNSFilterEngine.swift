import Foundation
import NIOConcurrencyHelpers
import NIOCore
import Prometheus
import WeirCore

/// What a dns.filter answers, without sockets: canaries, then the rules, then the cache, then the upstreams
/// (SERVFAIL when none answers — never another resolver). Counts every answer by result.
final class DNSFilterEngine: Sendable {
    enum Result: String, CaseIterable {
        case allowed, blocked, cached, servfail, refused

        /// Its counter's place in `results`.
        var index: Int {
            switch self {
            case .allowed: 0
            case .blocked: 1
            case .cached: 2
            case .servfail: 3
            case .refused: 4
            }
        }
    }

    /// When a query was read: its wall time for the query log, and the instant its latency counts from. A
    /// UDP batch shares one (two clock reads per batch, not per query).
    struct Arrival: Sendable {
        let time: Double
        let instant: ContinuousClock.Instant

        static var now: Arrival { Arrival(time: Date().timeIntervalSince1970, instant: .now) }
    }

    private let config: DNSFilterConfig
    /// The pipeline, whose followers (enforce.nftables `domains_from`) learn every answer's addresses first.
    private let pipeline: String
    private let cache: DNSCache
    private let upstreams: Upstreams
    private let metrics: PipelineMetrics
    private let results: [Prometheus.Counter]
    private let cacheEntries: Prometheus.Gauge
    private let fastest: FastestAddress?
    private let prefetches: Prometheus.Counter
    private let staleAnswers: Prometheus.Counter
    private let inflight = NIOLockedValueBox(0)
    private let queryLog: QueryLog?
    /// The last answers, for the coordinator's query log view (`query_log.ring`); installed when the stage starts.
    let queryRing: DNSQueryRing?
    /// Whether answers are recorded at all (their latency measured).
    private let recording: Bool
    /// Four names: compared directly (a string comparison stops at a differing length) rather than hashed.
    private let canaries: [String]
    /// Their lengths in bytes (O(1) for a name): most names are no canary's length and skip the comparisons.
    private let canaryLengths: [Int]
    /// Groups' networks (peer names resolved at start), most specific first.
    private let groupNetworks = NIOLockedValueBox<[(network: IPNetwork, group: String, rules: DomainRules)]>([])
    /// Seconds a made-up answer (`zero`) may be cached by clients.
    static let blockedTTL: UInt32 = 60

    init(config: DNSFilterConfig, pipeline: String, metrics: PipelineMetrics, group: any EventLoopGroup) {
        self.config = config
        self.pipeline = pipeline
        self.metrics = metrics
        cache = DNSCache(capacity: config.cacheSize, minTTL: config.minTTL, maxTTL: config.maxTTL, staleWindow: config.serveStale, prefetch: config.prefetch)
        fastest = config.fastestAddress.map { FastestAddress(port: $0.port, timeout: $0.timeout, group: group) }
        prefetches = metrics.counter("weir_dns_cache_prefetches_total", labels: [], help: "Cached answers refreshed before they expired (prefetch).")
        staleAnswers = metrics.counter(
            "weir_dns_stale_answers_total", labels: [], help: "Expired answers given because every upstream failed (serve_stale); counted as cached too.")
        canaries = config.canaries ? DNSFilterConfig.canaryDomains : []
        canaryLengths = canaries.map(\.utf8.count)
        queryLog = config.queryLogFile.map { QueryLog(path: $0, maxSize: config.queryLogMaxSize) }
        queryRing = config.queryLogRing > 0 ? DNSQueryRing(capacity: config.queryLogRing) : nil
        recording = queryLog != nil || queryRing != nil
        results = Result.allCases.sorted { $0.index < $1.index }.map {
            metrics.counter("weir_dns_queries_total", labels: [("result", $0.rawValue)], help: "DNS queries answered, by result.")
        }
        cacheEntries = metrics.gauge("weir_dns_cache_entries", labels: [], help: "Answers in the DNS cache.")
        upstreams = Upstreams(
            config.upstreams, strategy: config.strategy, timeout: config.upstreamTimeout, group: group, caFile: config.upstreamCA
        ) { upstream, seconds, error in
            if let seconds {
                metrics.durationHistogram(
                    "weir_dns_upstream_duration_seconds", labels: [("upstream", upstream.description)],
                    buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                              .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5)],
                    help: "Time an upstream took to answer."
                ).record(.nanoseconds(Int64(seconds * 1e9)))
            }
            if error != nil {
                metrics.counter("weir_dns_upstream_errors_total", labels: [("upstream", upstream.description)], help: "Upstream queries that failed (timeout, SERVFAIL, REFUSED, bad answer).").increment()
            }
        }
    }

    /// Takes the groups' sources, with peer names as the addresses the pipeline's wireguard stage gave them.
    func resolveGroups(peerAddresses: [String: [IPNetwork]]) {
        var entries: [(network: IPNetwork, group: String, rules: DomainRules)] = []
        for group in config.groups {
            for network in group.networks + group.peers.flatMap({ peerAddresses[$0] ?? [] }) { entries.append((network, group.name, group.rules.rules)) }
        }
        entries.sort { $0.network.prefix > $1.network.prefix }
        groupNetworks.withLockedValue { $0 = entries }
    }

    /// A client's group (nil: the default group) and its rules.
    private func clientGroup(_ address: IPNetwork?) -> (name: String?, rules: DomainRules) {
        guard !config.groups.isEmpty, let address else { return (nil, config.rules.rules) }
        let match = groupNetworks.withLockedValue { entries in entries.first { $0.network.contains(address) } }
        return match.map { ($0.group, $0.rules) } ?? (nil, config.rules.rules)
    }

    func closeLog() { queryLog?.close() }

    /// weir_dns_rules{list}: rules per list, set when the server starts.
    func publishRules() {
        for (list, count) in config.groups.map(\.rules.rules.counts).reduce(config.rules.rules.counts, { $0.merging($1) { max($0, $1) } }) {
            metrics.gauge("weir_dns_rules", labels: [("list", list)], help: "Rules loaded per list.").set(to: Double(count))
        }
    }

    enum Immediate {
        /// The reply (nil: nothing to send).
        case answered([UInt8]?)
        /// A cache hit, counted in the batch: the caller copies it where it goes (`Hit.bytes`, `Hit.write`).
        case cached(DNSCache.Hit)
        /// Needs waiting: pass it to `answer`.
        case deferred(Pending)
    }

    /// The answers of one read — a UDP socket's batch, or one TCP query — counted and logged together once
    /// they have been sent (`record`): one update per counter and one lock of the query ring per batch, not per
    /// query. Their latency is the batch's: from its arrival to its answers' send.
    struct Batch {
        fileprivate(set) var arrival: Arrival
        /// Whether the pipeline has followers, asked once per batch.
        fileprivate var followed: Bool
        fileprivate var counts = [Int](repeating: 0, count: Result.allCases.count)
        fileprivate var events: [DNSQueryEvent] = []
    }

    /// A batch of queries read now.
    func batch() -> Batch {
        Batch(arrival: .now, followed: ResolvedAnswerFollowers.shared.isFollowed(pipeline))
    }

    /// `batch`, recorded, becomes one of queries read now, keeping its storage (a UDP socket's thread reuses
    /// one: no allocation per read).
    func restart(_ batch: inout Batch) {
        batch.arrival = .now
        batch.followed = ResolvedAnswerFollowers.shared.isFollowed(pipeline)
    }

    /// Counts and logs a batch's answers (once they were sent), and empties it.
    func record(_ batch: inout Batch) {
        for index in batch.counts.indices where batch.counts[index] > 0 {
            results[index].increment(by: Int64(batch.counts[index]))
            batch.counts[index] = 0
        }
        guard !batch.events.isEmpty else { return }
        let elapsed = ContinuousClock.now - batch.arrival.instant
        for index in batch.events.indices { batch.events[index].latency = elapsed }
        queryRing?.append(contentsOf: batch.events)
        if let queryLog { for event in batch.events { queryLog.write(event) } }
        batch.events.removeAll(keepingCapacity: true)
    }

    /// A query that needs waiting, as far as `answerImmediately` got with it (parsed, its group's rules
    /// applied), so the task that answers it does none of that again.
    struct Pending: Sendable {
        let query: DNSWire.Query
        let bytes: [UInt8]
        let client: DNSClient
        let udp: Bool
        let arrival: Arrival
        let group: String?
        /// The allow rule that matched, for the query log.
        let rule: String?
        /// The name's entry in `records`, which answers before the cache and the upstreams.
        let record: LocalRecords.Record?
        /// Whether the cache was looked up already (it is not when followers must see the answer first).
        let cacheChecked: Bool
    }

    /// What can be answered without waiting — garbage, canaries, blocked names, cache hits — on the caller's
    /// thread (no task per query on the hot path), counted in `batch`. Records, upstreams and answers that
    /// followers (enforce.nftables `domains_from`) must see first are deferred to `answer`.
    func answerImmediately(_ bytes: [UInt8], client: DNSClient, udp: Bool, batch: inout Batch) -> Immediate {
        let query: DNSWire.Query
        do { query = try DNSWire.parseQuery(bytes) } catch { return .answered(DNSWire.formatError(bytes)) }
        guard query.opcode == 0 else { return .answered(DNSWire.answer(to: query, code: DNSWire.ResponseCode.notImplemented)) }
        let group = clientGroup(config.groups.isEmpty ? nil : client.network)
        let name = query.question.name
        if canaryLengths.contains(name.utf8.count), canaries.contains(name) {
            let reply = DNSWire.answer(to: query, code: DNSWire.ResponseCode.nameError)
            return .answered(finish(query, reply, .blocked, Decided(rule: "canary"), client: client, udp: udp, batch: &batch))
        }
        let decision = group.rules.decide(name)
        let rule = decision.map { "\($0.list):\($0.line)" }
        if let decision, !decision.allowed {
            return .answered(finish(query, blocked(query), .blocked, Decided(rule: rule), client: client, udp: udp, batch: &batch))
        }
        let record = config.records.isEmpty ? nil : config.records.lookup(name)
        let checkCache = record == nil && !batch.followed
        if checkCache, let hit = cache.lookup(query.question, id: query.id, now: batch.arrival.instant) {
            if hit.prefetch { refresh(query.question) }
            // Too large for the client's datagrams: `finish` truncates it.
            guard !udp || hit.count <= query.udpPayloadSize else {
                return .answered(finish(query, hit.bytes, .cached, Decided(rule: rule), client: client, udp: udp, batch: &batch))
            }
            note(query, .cached, Decided(rule: rule), client: client, batch: &batch)
            return .cached(hit)
        }
        return .deferred(Pending(
            query: query, bytes: bytes, client: client, udp: udp, arrival: batch.arrival, group: group.name, rule: rule, record: record,
            cacheChecked: checkCache))
    }

    /// The answer to a deferred query (records, the cache when followers are present, the upstreams), counted
    /// and logged.
    func answer(_ pending: Pending) async -> [UInt8] {
        let query = pending.query
        var (reply, result, decided) = await resolve(pending)
        if result == .allowed || result == .cached, !(await released(reply, to: pending.client, group: pending.group, name: query.question.name))
        {
            (reply, result, decided.rule) = (DNSWire.answer(to: query, code: DNSWire.ResponseCode.serverFailure), .servfail, "domains_from: allowlist full")
        }
        var batch = Batch(arrival: pending.arrival, followed: false)
        defer { record(&batch) }
        return finish(query, reply, result, decided, client: pending.client, udp: pending.udp, batch: &batch)
    }

    /// Counts and logs an answer in `batch`, and truncates it for a UDP client whose datagrams it does not fit.
    private func finish(
        _ query: DNSWire.Query, _ reply: [UInt8], _ result: Result, _ decided: Decided, client: DNSClient, udp: Bool, batch: inout Batch
    ) -> [UInt8] {
        note(query, result, decided, client: client, batch: &batch)
        guard udp, reply.count > query.udpPayloadSize else { return reply }
        // The header and question with TC set; the client asks again over TCP.
        var truncated = DNSWire.answer(to: query, code: reply.count > 3 ? reply[3] & 0x0F : 0)
        truncated[2] |= 0x02
        return truncated
    }

    /// Counts an answer in `batch`, and keeps its query log event when answers are recorded (the latency is
    /// set when the batch is recorded).
    private func note(_ query: DNSWire.Query, _ result: Result, _ decided: Decided, client: DNSClient, batch: inout Batch) {
        batch.counts[result.index] += 1
        guard recording else { return }
        batch.events.append(DNSQueryEvent(
            time: batch.arrival.time, client: client, name: query.question.name, type: query.question.type, result: result.rawValue,
            rule: decided.rule, upstream: decided.upstream, latency: .zero))
    }

    /// Lets the pipeline's followers take the answer's addresses before the client gets them; false when one
    /// could not (the client then gets SERVFAIL, not an address its allowlist refuses).
    private func released(_ reply: [UInt8], to client: DNSClient, group: String?, name: String) async -> Bool {
        let followers = ResolvedAnswerFollowers.shared.of(pipeline)
        guard !followers.isEmpty, let response = try? DNSWire.parseResponse(reply), !response.addresses.isEmpty else { return true }
        let answer = ResolvedAnswer(client: client.bytes, group: group, name: name, addresses: response.addresses)
        for follower in followers where !(await follower.admit(answer)) { return false }
        return true
    }

    /// What decided an answer, for the query log.
    struct Decided {
        var rule: String?
        var upstream: String?
    }

    /// A cache hit, with a refresh started when it is due (prefetch).
    private func cachedAnswer(_ query: DNSWire.Query, rule: String?, now: ContinuousClock.Instant = .now) -> ([UInt8], Result, Decided)? {
        guard let hit = cache.lookup(query.question, id: query.id, now: now) else { return nil }
        if hit.prefetch { refresh(query.question) }
        return (hit.bytes, .cached, Decided(rule: rule))
    }

    private func resolve(_ pending: Pending) async -> ([UInt8], Result, Decided) {
        let query = pending.query
        let rule = pending.rule
        if let record = pending.record { return (await localAnswer(query, record), .allowed, Decided(rule: "records")) }
        if !pending.cacheChecked, let cached = cachedAnswer(query, rule: rule) { return cached }
        let admitted = inflight.withLockedValue { count -> Bool in
            guard count < config.maxInflight else { return false }
            count += 1
            return true
        }
        guard admitted else { return (DNSWire.answer(to: query, code: DNSWire.ResponseCode.refused), .refused, Decided(rule: "max_inflight")) }
        defer { inflight.withLockedValue { $0 -= 1 } }
        do {
            var answer = try await upstreams.resolve(pending.bytes, question: query.question)
            if let fastest, query.question.type == DNSWire.RecordType.a || query.question.type == DNSWire.RecordType.aaaa,
                answer.response.addresses.count > 1, let index = await fastest.probe(answer.response.addresses.map(\.bytes)) {
                // The answer becomes the one address that connected first; cached so, the probe holds for its TTL.
                let chosen = answer.response.addresses[index]
                let bytes = DNSWire.answer(to: query, code: 0, records: [(query.question.type, chosen.ttl, chosen.bytes)])
                if let response = try? DNSWire.parseResponse(bytes) { answer = .init(bytes: bytes, response: response, upstream: answer.upstream) }
            }
            var reply = cache.store(query.question, bytes: answer.bytes, response: answer.response)
            cacheEntries.set(to: Double(cache.count))
            reply[0] = UInt8(query.id >> 8)
            reply[1] = UInt8(query.id & 0xFF)
            return (reply, .allowed, Decided(rule: rule, upstream: answer.upstream.description))
        } catch {
            if let stale = cache.stale(query.question, id: query.id) {
                staleAnswers.increment()
                return (stale, .cached, Decided(rule: "serve_stale"))
            }
            return (DNSWire.answer(to: query, code: DNSWire.ResponseCode.serverFailure), .servfail, Decided(rule: rule))
        }
    }

    /// Asks the upstreams for a cached name in the background and stores the fresh answer (prefetch). Within
    /// max_inflight like any query; a failed refresh leaves the entry to expire (or be prefetched again).
    private func refresh(_ question: DNSWire.Question) {
        let admitted = inflight.withLockedValue { count -> Bool in
            guard count < config.maxInflight else { return false }
            count += 1
            return true
        }
        guard admitted else {
            cache.prefetchFailed(question)
            return
        }
        Task {
            defer { inflight.withLockedValue { $0 -= 1 } }
            do {
                let answer = try await upstreams.resolve(DNSWire.query(id: 0, name: question.name, type: question.type), question: question)
                cache.store(question, bytes: answer.bytes, response: answer.response)
                prefetches.increment()
            } catch {
                cache.prefetchFailed(question)
            }
        }
    }

    /// Seconds clients may keep an answer from `records`.
    static let localTTL: UInt32 = 300

    /// An answer from `records`: the addresses of the asked family, or a CNAME to the target with the
    /// target's addresses (from `records` again, at most 8 rewrites deep, else from the upstreams).
    private func localAnswer(_ query: DNSWire.Query, _ record: LocalRecords.Record) async -> [UInt8] {
        let type = query.question.type
        let wanted = { (address: IPNetwork) in (type == DNSWire.RecordType.a && address.isIPv4) || (type == DNSWire.RecordType.aaaa && !address.isIPv4) }
        switch record {
        case .addresses(let addresses):
            return DNSWire.answer(to: query, code: 0, records: addresses.filter(wanted).map { (type, Self.localTTL, $0.bytes) }, authoritative: true)
        case .alias(let first):
            // The question's name → the first target; each further rewrite owned by the name before it.
            let cname = (DNSWire.RecordType.cname, Self.localTTL, DNSWire.encodeName(first))
            var chain: [(owner: String, type: UInt16, ttl: UInt32, data: [UInt8])] = []
            var target = first
            for _ in 0..<8 {
                switch config.records.lookup(target) {
                case .addresses(let addresses)?:
                    let found = addresses.filter(wanted).map { (target, type, Self.localTTL, $0.bytes) }
                    return DNSWire.answer(to: query, code: 0, records: [cname], others: chain + found, authoritative: true)
                case .alias(let next)?:
                    chain.append((target, DNSWire.RecordType.cname, Self.localTTL, DNSWire.encodeName(next)))
                    target = next
                case nil:
                    guard type == DNSWire.RecordType.a || type == DNSWire.RecordType.aaaa,
                        config.rules.rules.decide(target)?.allowed != false,
                        let answer = try? await upstreams.resolve(
                            DNSWire.query(id: 0, name: target, type: type), question: .init(name: target, type: type, qclass: 1))
                    else { return DNSWire.answer(to: query, code: 0, records: [cname], others: chain, authoritative: true) }
                    let found = answer.response.addresses.map { (target, type, $0.ttl, $0.bytes) }
                    return DNSWire.answer(to: query, code: 0, records: [cname], others: chain + found)
                }
            }
            return DNSWire.answer(to: query, code: DNSWire.ResponseCode.serverFailure)
        }
    }

    private func blocked(_ query: DNSWire.Query) -> [UInt8] {
        switch config.blockAnswer {
        case .nxdomain: return DNSWire.answer(to: query, code: DNSWire.ResponseCode.nameError)
        case .refused: return DNSWire.answer(to: query, code: DNSWire.ResponseCode.refused)
        case .zero:
            switch query.question.type {
            case DNSWire.RecordType.a: return DNSWire.answer(to: query, code: 0, records: [(DNSWire.RecordType.a, Self.blockedTTL, [0, 0, 0, 0])])
            case DNSWire.RecordType.aaaa:
                return DNSWire.answer(to: query, code: 0, records: [(DNSWire.RecordType.aaaa, Self.blockedTTL, [UInt8](repeating: 0, count: 16))])
            default: return DNSWire.answer(to: query, code: 0)
            }
        }
    }
}
