import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import WeirCore

/// The running `enforce.nftables` stage. `start` applies the pipeline's objects as a delta and keeps the
/// allowlist's domains resolved; `stop` leaves the rules in force (a firewall does not open when its agent
/// stops); `retire` removes them.
final class EnforceNftables: ServiceStage, ScrapeCollector {
    typealias Config = EnforceNftablesConfig

    private let config: Config
    private let owner: String
    private let listener: (port: Int, transport: Transport)?
    private let stateFile: String
    private let stateDirectory: String
    private let collectors: ScrapeCollectors
    private let logger: Logger

    private struct Resolution: Sendable {
        var addresses: Set<IPNetwork>
        var refreshAt: ContinuousClock.Instant
    }

    private struct State: Sendable {
        var running = false
        var resolutions: [String: Resolution] = [:]
        var kept: [Config.DestinationEntry] = []
        var outcomes: [String: Int] = [:]
        var refresher: Task<Void, Never>?
        var applied = NftOwnerState()
        /// `domains_from`: the followers registered with dns.filter pipelines, and the keep-alive loop.
        var followers: [FollowedPipeline] = []
        var keepAlive: Task<Void, Never>?
    }

    private let state = NIOLockedValueBox(State())

    init(config: Config, context: StageContext) {
        self.config = config
        self.owner = context.pipeline
        if let listener = context.listener, let transport = listener.transport {
            self.listener = (listener.bindAddress.port, transport)
        } else {
            self.listener = nil
        }
        self.stateFile = context.environment.stateDirectory + "/nftables/" + context.pipeline + ".json"
        self.stateDirectory = context.environment.stateDirectory
        self.collectors = context.metrics.collectors
        var logger = Logger(label: "weir.enforce.nftables")
        logger[metadataKey: "pipeline"] = "\(context.pipeline)"
        self.logger = logger
    }

    // MARK: - Lifecycle

    func start() async throws {
        guard !state.withLockedValue({ $0.running }) else { return }
        let saved = SavedState.load(stateFile)
        let kept = keptProtectedEntries(saved)
        var resolutions: [String: Resolution] = [:]
        state.withLockedValue { $0.kept = kept }  // the domains to resolve include kept ones
        let domains = self.domains
        if let allowlist = config.destinations {
            let resolver = makeResolver(allowlist)
            await withTaskGroup(of: (String, Resolution).self) { group in
                for domain in domains {
                    group.addTask {
                        let fallback = Set(saved.resolved[domain]?.compactMap { try? IPNetwork.parse($0) } ?? [])
                        return (domain, await self.resolve(domain, resolver: resolver, allowlist: allowlist, previous: fallback))
                    }
                }
                for await (domain, resolution) in group { resolutions[domain] = resolution }
            }
        }
        let desired = compile(resolutions: resolutions, kept: kept)
        let started = ContinuousClock.now
        let plan = try NftablesTable.shared.apply(owner: owner, desired)
        OwnerUsers.shared.add(self, owner)
        logger.info(
            "nftables applied",
            metadata: [
                "commands": "\(plan.commands.count)", "address_changes": "\(plan.addressChanges.reduce(0) { $0 + $1.add.count + $1.remove.count })",
                "took": "\(ContinuousClock.now - started)",
            ])
        let watchDomains = !resolutions.isEmpty
        state.withLockedValue { state in
            state.running = true
            state.resolutions = resolutions
            state.kept = kept
            state.applied = desired
            if watchDomains, let allowlist = config.destinations {
                state.refresher = Task { [weak self] in await self?.refreshLoop(allowlist) }
            }
        }
        save()
        startFollowing()
        collectors.add(self)
    }

    /// The pairs of `domains_from` entries: those in the kernel are kept, answers of the followed dns.filter
    /// pipelines add more, and a loop keeps the ones with live connections.
    private func startFollowing() {
        guard let allowlist = config.destinations, !allowlist.followed.isEmpty else { return }
        let addresses = FollowedAddresses(owner: owner, allowlist: allowlist, logger: logger)
        addresses.load()
        let followers = allowlist.followed.map { FollowedPipeline(rule: $0, addresses: addresses) }
        for follower in followers { ResolvedAnswerFollowers.shared.add(follower, following: follower.rule.pipeline) }
        let period = min(max(allowlist.followGrace / 3, .seconds(1)), .seconds(10))
        let keepAlive = Task {
            while !Task.isCancelled {
                do { try await Task.sleep(for: period) } catch { return }
                addresses.keepLive(horizon: period * 2)
            }
        }
        state.withLockedValue { state in
            state.followers = followers
            state.keepAlive = keepAlive
        }
    }

    func stop() async {
        collectors.remove(self)
        let refresher = state.withLockedValue { state in
            defer {
                state.running = false
                state.refresher = nil
            }
            return state.refresher
        }
        refresher?.cancel()
        await refresher?.value
        let (followers, keepAlive) = state.withLockedValue { state in
            defer {
                state.followers = []
                state.keepAlive = nil
            }
            return (state.followers, state.keepAlive)
        }
        for follower in followers { ResolvedAnswerFollowers.shared.remove(follower, following: follower.rule.pipeline) }
        keepAlive?.cancel()
        await keepAlive?.value
    }

    /// The rules match interfaces by name, so an interface deleted and created again is enforced again by
    /// itself; one that is missing is reported (nothing it should carry can flow).
    func reconcile() async -> ReconcileReport {
        let named = Set((config.destinations?.interfaces ?? []) + config.masquerade.map(\.outInterface))
        var report = ReconcileReport(problems: named.sorted().filter { if_nametoindex($0) == 0 }.map(ReconcileReport.missingInterface))
        guard !config.profilePeers.isEmpty else { return report }
        // Profiles by peer name follow the peers' addresses (given from a pool when the wireguard stage ran,
        // or changed by a reload of its pipeline alone).
        let addresses = PeerAddressBook.addresses(stateDirectory: stateDirectory, pipeline: owner)
        for peer in config.profilePeers where (addresses[peer] ?? []).isEmpty {
            report.problems.append("peer \(peer) has no tunnel address yet: its profile matches nothing")
        }
        let (running, resolutions, kept, applied) = state.withLockedValue { ($0.running, $0.resolutions, $0.kept, $0.applied) }
        guard running else { return report }
        let desired = compile(resolutions: resolutions, kept: kept, peerAddresses: addresses)
        guard desired != applied else { return report }
        do {
            _ = try NftablesTable.shared.apply(owner: owner, desired)
            state.withLockedValue { $0.applied = desired }
            report.repaired.append("profiles follow the peers' addresses")
        } catch {
            report.problems.append("applying the peers' profiles failed: \(error)")
        }
        return report
    }

    func retire() async {
        guard OwnerUsers.shared.remove(self, owner) else { return }
        do {
            try NftablesTable.shared.remove(owner: owner)
            try? FileManager.default.removeItem(atPath: stateFile)
            logger.info("removed the pipeline's nftables objects")
        } catch {
            logger.error("removing the pipeline's nftables objects failed", metadata: ["error": "\(error)"])
        }
    }

    /// What the log and `/healthz` say about a pipeline kept in force for its protected entries.
    static func retainedMessage(pipeline: String, entries: [String]) -> String {
        "enforce.nftables of pipeline \"\(pipeline)\" was removed while the agent was stopped, but it holds protected entries "
            + "(\(entries.joined(separator: ", "))): it stays in force until they are released (add the stage back with them listed "
            + "protected: false, reload, then remove it)"
    }

    /// Protected allowlist entries are released one by one (`protected: false`), never by removing the stage.
    func retirementRefusal() -> String? {
        let protected = ((config.destinations?.entries ?? []) + state.withLockedValue { $0.kept }).filter(\.protected)
        guard !protected.isEmpty else { return nil }
        return "the allowlist has protected entries (\(protected.map(\.text).joined(separator: ", "))); "
            + "set protected: false on them and reload before removing the stage"
    }

    // MARK: - Domains

    private var domains: [String] {
        var names = Set<String>()
        for entry in (config.destinations?.entries ?? []) + state.withLockedValue({ $0.kept }) {
            if case .domain(let name) = entry.target { names.insert(name) }
        }
        return names.sorted()
    }

    private func makeResolver(_ allowlist: Config.DestinationAllowlist) -> DNSResolver {
        let servers = allowlist.resolvers.isEmpty
            ? DNSResolver.systemServers()
            : allowlist.resolvers.compactMap { try? SocketAddress(ipAddress: $0.host, port: $0.port) }
        return DNSResolver(servers: servers, timeout: .seconds(2), group: MultiThreadedEventLoopGroup.singleton)
    }

    /// Resolves one domain; on failure keeps `previous` and tries again sooner.
    private func resolve(_ domain: String, resolver: DNSResolver, allowlist: Config.DestinationAllowlist, previous: Set<IPNetwork>) async -> Resolution {
        let allowPrivate = ((config.destinations?.entries ?? []) + state.withLockedValue { $0.kept }).contains {
            $0.target == .domain(domain) && $0.allowPrivate
        }
        let now = ContinuousClock.now
        switch await resolver.resolve(domain) {
        case .addresses(let addresses, let ttl):
            count("success")
            let refused = addresses.filter { !allowPrivate && !$0.isPublic }
            if !refused.isEmpty {
                logger.warning("domain resolves to non-public addresses; left out (allow_private: true allows them)", metadata: ["domain": "\(domain)", "addresses": "\(refused.map(\.description))"])
            }
            let delay = max(allowlist.minimumTTL, min(.seconds(Int(ttl)), allowlist.resolveInterval))
            return Resolution(addresses: Set(addresses).subtracting(refused), refreshAt: now + delay)
        case .nameError:
            count("nxdomain")
            logger.warning("domain does not exist; its addresses are removed", metadata: ["domain": "\(domain)"])
            return Resolution(addresses: [], refreshAt: now + allowlist.resolveInterval)
        case .failure(let reason):
            count("failure")
            logger.warning("resolving failed; keeping the previous addresses", metadata: ["domain": "\(domain)", "error": "\(reason)"])
            return Resolution(addresses: previous, refreshAt: now + max(allowlist.minimumTTL, .seconds(5)))
        }
    }

    private func count(_ result: String) { state.withLockedValue { $0.outcomes[result, default: 0] += 1 } }

    /// Re-resolves each domain when its answer expires; applies only the address changes.
    private func refreshLoop(_ allowlist: Config.DestinationAllowlist) async {
        let resolver = makeResolver(allowlist)
        while !Task.isCancelled {
            let next = state.withLockedValue { $0.resolutions.values.map(\.refreshAt).min() } ?? (ContinuousClock.now + allowlist.resolveInterval)
            do { try await Task.sleep(until: next, clock: .continuous) } catch { return }
            let now = ContinuousClock.now
            let due = state.withLockedValue { state in state.resolutions.filter { $0.value.refreshAt <= now } }
            var updated: [String: Resolution] = [:]
            for (domain, resolution) in due {
                updated[domain] = await resolve(domain, resolver: resolver, allowlist: allowlist, previous: resolution.addresses)
            }
            if Task.isCancelled { return }
            let (resolutions, kept) = state.withLockedValue { state -> ([String: Resolution], [Config.DestinationEntry]) in
                state.resolutions.merge(updated) { $1 }
                return (state.resolutions, state.kept)
            }
            let desired = compile(resolutions: resolutions, kept: kept)
            do {
                let started = ContinuousClock.now
                let plan = try NftablesTable.shared.apply(owner: owner, desired)
                state.withLockedValue { $0.applied = desired }
                if !plan.isEmpty {
                    logger.info(
                        "allowlist follows DNS",
                        metadata: [
                            "added": "\(plan.addressChanges.flatMap(\.add).map(\.description))",
                            "removed": "\(plan.addressChanges.flatMap(\.remove).map(\.description))", "took": "\(ContinuousClock.now - started)",
                        ])
                }
                save()
            } catch {
                count("apply_failed")
                logger.error("applying resolved addresses failed; the previous ones stay", metadata: ["error": "\(error)"])
                // Forget the failed answers so the kernel and our view agree; retry later.
                state.withLockedValue { state in
                    for domain in updated.keys { state.resolutions[domain]?.refreshAt = ContinuousClock.now + allowlist.minimumTTL }
                }
            }
        }
    }

    /// `peerAddresses`: the peers' addresses when the caller already read them (else read here, when profiles
    /// name peers).
    private func compile(
        resolutions: [String: Resolution], kept: [Config.DestinationEntry], peerAddresses: [String: [IPNetwork]]? = nil
    ) -> NftOwnerState {
        var compiler = NftCompiler(owner: owner, config: config, listener: listener)
        compiler.resolved = resolutions.values.reduce(into: Set<IPNetwork>()) { $0.formUnion($1.addresses) }
        compiler.keptEntries = kept
        if !config.profilePeers.isEmpty {
            compiler.peerAddresses = peerAddresses ?? PeerAddressBook.addresses(stateDirectory: stateDirectory, pipeline: owner)
        }
        return compiler.compile()
    }

    // MARK: - Protected entries

    /// Protected entries of the previous configuration that this one left out: they stay, and the log says why.
    private func keptProtectedEntries(_ saved: SavedState) -> [Config.DestinationEntry] {
        let configured = Set((config.destinations?.entries ?? []).map(\.target))
        var kept: [Config.DestinationEntry] = []
        for entry in saved.protectedEntries() where !configured.contains(entry.target) {
            logger.warning(
                "protected allowlist entry kept although the configuration omits it; list it with protected: false to release it, then remove it",
                metadata: ["entry": "\(entry.text)"])
            kept.append(entry)
        }
        return kept
    }

    private func save() {
        let snapshot = state.withLockedValue { ($0.resolutions, $0.kept) }
        let entries = (config.destinations?.entries ?? []) + snapshot.1
        SavedState(
            protected: entries.filter(\.protected).map { .init(entry: $0.text, allowPrivate: $0.allowPrivate) },
            resolved: snapshot.0.mapValues { $0.addresses.map(\.description).sorted() }
        ).write(stateFile, logger: logger)
    }

    // MARK: - Metrics

    static let setElements = MetricFamily("weir_nft_set_elements", .gauge, help: "Elements in each nftables set of an enforce.nftables stage.")
    static let setMaxElements = MetricFamily(
        "weir_nft_set_max_elements", .gauge, help: "The size (max_elements) of each nftables set of an enforce.nftables stage that has one.")
    static let droppedPackets = MetricFamily("weir_nft_dropped_packets_total", .counter, help: "Packets enforce.nftables dropped.")
    static let droppedBytes = MetricFamily("weir_nft_dropped_bytes_total", .counter, help: "Bytes enforce.nftables dropped.")
    static let resolutions = MetricFamily(
        "weir_nft_domain_resolutions_total", .counter, help: "Resolutions of allowlisted domains by result (success, nxdomain, failure, apply_failed).")
    static let allowedBytes = MetricFamily(
        "weir_nft_allowed_bytes_total", .counter, help: "Bytes sent to each allowlisted destination (count_elements: true).")
    static let allowedPackets = MetricFamily(
        "weir_nft_allowed_packets_total", .counter, help: "Packets sent to each allowlisted destination (count_elements: true).")

    static let followElements = MetricFamily(
        "weir_nft_follow_elements", .gauge, help: "Client and destination pairs that domains_from entries allow now, by family.")
    static let followAnswers = MetricFamily(
        "weir_nft_follow_answers_total", .counter,
        help: "dns.filter answers followed by domains_from entries, by result (admitted; refused: the set was full of pairs with live connections; failed: the kernel refused).")
    static let followPairs = MetricFamily(
        "weir_nft_follow_pairs_total", .counter, help: "Followed pairs evicted to make room, or kept past their expiry for a live connection.")

    func collect(into exposition: inout ExpositionWriter) {
        let (applied, outcomes, following) = state.withLockedValue { ($0.applied, $0.outcomes, $0.followers.first?.addresses) }
        func labels(_ pairs: (String, String)...) -> [UInt8] {
            var bytes: [UInt8] = []
            bytes.appendLabel("pipeline", owner)
            for (key, value) in pairs {
                bytes.append(UInt8(ascii: ","))
                bytes.appendLabel(key, value)
            }
            return bytes
        }
        exposition.write(Self.setElements) { body in
            // Sets with timeouts (domains_from) are counted by weir_nft_follow_elements.
            for name in applied.sets.keys.sorted() where applied.sets[name]?.timeout != true {
                let count = (applied.addresses[name]?.count ?? 0) + (applied.networks[name]?.count ?? 0)
                body.appendSample(Array(Self.setElements.name.utf8), labels: labels(("set", name)), value: UInt64(count))
            }
        }
        // So that "how full" is one division in a query (the alert on sets near max_elements).
        exposition.write(Self.setMaxElements) { body in
            for name in applied.sets.keys.sorted() where applied.sets[name]?.timeout != true {
                guard let size = applied.sets[name]?.size else { continue }
                body.appendSample(Array(Self.setMaxElements.name.utf8), labels: labels(("set", name)), value: UInt64(size))
            }
        }
        if let dropped = try? NftablesTable.shared.counter(owner: owner, "dropped") {
            exposition.write(Self.droppedPackets) { $0.appendSample(Array(Self.droppedPackets.name.utf8), labels: labels(), value: UInt64(dropped.packets)) }
            exposition.write(Self.droppedBytes) { $0.appendSample(Array(Self.droppedBytes.name.utf8), labels: labels(), value: UInt64(dropped.bytes)) }
        }
        if config.destinations != nil {
            exposition.write(Self.resolutions) { body in
                for result in ["success", "nxdomain", "failure", "apply_failed"] {
                    body.appendSample(Array(Self.resolutions.name.utf8), labels: labels(("result", result)), value: UInt64(outcomes[result] ?? 0))
                }
            }
        }
        if let following {
            let counts = following.counts
            let elements = following.elements
            exposition.write(Self.followElements) { body in
                body.appendSample(Array(Self.followElements.name.utf8), labels: labels(("family", "ipv4")), value: UInt64(elements.ipv4))
                body.appendSample(Array(Self.followElements.name.utf8), labels: labels(("family", "ipv6")), value: UInt64(elements.ipv6))
            }
            exposition.write(Self.followAnswers) { body in
                for (result, value) in [("admitted", counts.admitted), ("refused", counts.refused), ("failed", counts.failed)] {
                    body.appendSample(Array(Self.followAnswers.name.utf8), labels: labels(("result", result)), value: UInt64(value))
                }
            }
            exposition.write(Self.followPairs) { body in
                for (event, value) in [("evicted", counts.evicted), ("kept", counts.kept)] {
                    body.appendSample(Array(Self.followPairs.name.utf8), labels: labels(("event", event)), value: UInt64(value))
                }
            }
        }
        guard config.destinations?.countElements == true else { return }
        var elements: [(network: IPNetwork, packets: UInt64, bytes: UInt64)] = []
        for set in ["dst4", "dst6"] { elements += (try? NftablesTable.shared.listAddressSet(NftNames.full(owner, set))) ?? [] }
        for set in ["dstnet4", "dstnet6"] { elements += (try? NftablesTable.shared.listIntervalSetCounters(NftNames.full(owner, set))) ?? [] }
        exposition.write(Self.allowedBytes) { body in
            for element in elements {
                body.appendSample(Array(Self.allowedBytes.name.utf8), labels: labels(("destination", element.network.description)), value: element.bytes)
            }
        }
        exposition.write(Self.allowedPackets) { body in
            for element in elements {
                body.appendSample(Array(Self.allowedPackets.name.utf8), labels: labels(("destination", element.network.description)), value: element.packets)
            }
        }
    }
}

/// What a stage keeps in `agent.state_dir/nftables/<pipeline>.json` between runs: protected entries (so a
/// configuration that omits them cannot remove them) and the last addresses of each domain (used when DNS
/// does not answer at start).
struct SavedState: Codable {
    struct Protected: Codable {
        var entry: String
        var allowPrivate: Bool
    }

    var protected: [Protected] = []
    var resolved: [String: [String]] = [:]

    static func load(_ path: String) -> SavedState {
        guard let data = FileManager.default.contents(atPath: path), let state = try? JSONDecoder().decode(SavedState.self, from: data) else {
            return SavedState()
        }
        return state
    }

    func protectedEntries() -> [EnforceNftablesConfig.DestinationEntry] {
        protected.compactMap { item in
            if let network = try? IPNetwork.parse(item.entry) {
                return .init(target: .network(network), allowPrivate: item.allowPrivate, protected: true)
            }
            return DomainName.normalized(item.entry).map { .init(target: .domain($0), allowPrivate: item.allowPrivate, protected: true) }
        }
    }

    func write(_ path: String, logger: Logger) {
        do {
            try StateFiles.writeJSON(self, to: path, pretty: true)
        } catch {
            logger.error("could not save the allowlist state", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }
}

/// Which stages of this process own a pipeline's objects: a stage retired on reload removes them only when
/// its successor (same pipeline) does not own them now.
enum OwnerUsers {
    static let shared = SharedStateUsers()
}
