import CWeirNetlink
import Foundation
import Glibc
import Logging
import NIOConcurrencyHelpers
import WeirCore
import WeirVPN

/// The running `wireguard` stage. `start` and every reconcile take the interface to the configuration:
/// the device created if missing, link settings and addresses, then peers by a `PeerPlan` (only what
/// changed, so untouched peers keep their sessions). `stop` leaves the tunnel up; `retire` removes the
/// interface and the stage's state.
final class WireGuard: ServiceStage, ScrapeCollector {
    private let config: WireGuardConfig
    private let pipeline: String
    private let environment: StageEnvironment
    private let collectors: ScrapeCollectors
    private let logger: Logger
    /// The backend running the interface, chosen at each converge (see `DeviceChoice`).
    private let currentDevice: NIOLockedValueBox<any WireGuardDevice>
    private var device: any WireGuardDevice { currentDevice.withLockedValue { $0 } }
    /// One converge at a time: the stage's own timer and the supervisor's reconcile.
    private let converging = NIOLock()
    /// Peer names by public key, for the metrics.
    private let names = NIOLockedValueBox<[WireGuardKey: String]>([:])
    /// Endpoint choices of peers with several endpoints, by name.
    private let failovers = NIOLockedValueBox<[String: EndpointFailover]>([:])
    /// Peers over their quota, taken off the device.
    private let disabled = NIOLockedValueBox<Set<String>>([])
    /// Usage per peer as last accounted, for the metrics.
    private let usage = NIOLockedValueBox<[String: WireGuardState.Usage]>([:])
    /// The purge refused at the last converge, reported until it clears.
    private let refusedPurge = NIOLockedValueBox<String?>(nil)

    /// Stages using an interface (a changed stage's successor starts before it retires).
    private static let interfaceUsers = SharedStateUsers()
    private static let pipelineUsers = SharedStateUsers()

    init(config: WireGuardConfig, context: StageContext) {
        self.config = config
        self.pipeline = context.pipeline
        self.environment = context.environment
        self.collectors = context.metrics.collectors
        self.currentDevice = NIOLockedValueBox(UserspaceDevice(interface: config.interface))
        var logger = Logger(label: "weir.wireguard")
        logger[metadataKey: "pipeline"] = "\(context.pipeline)"
        self.logger = logger
    }

    struct WireGuardError: Error, CustomStringConvertible {
        let description: String
    }

    // MARK: - Lifecycle

    func start() async throws {
        try converge()
        Self.interfaceUsers.add(self, config.interface)
        Self.pipelineUsers.add(self, pipeline)
        collectors.add(self)
    }

    func stop() async {
        collectors.remove(self)
    }

    /// The agent reconciles (see `reconcile`) at least this often while the stage runs.
    var reconcileInterval: Duration? { config.reconcileInterval }

    func retire() async {
        if Self.interfaceUsers.remove(self, config.interface) {
            device.destroy()
            // The interface's routes went with it; the host's full-tunnel rules do not.
            if WireGuardState.load(environment.stateDirectory, pipeline: pipeline)?.fullTunnelTable != nil {
                _ = try? TunnelRouting.convergeRules([])
            }
            logger.info("removed the interface", metadata: ["interface": "\(config.interface)"])
        }
        if Self.pipelineUsers.remove(self, pipeline) {
            unlink(WireGuardState.path(environment.stateDirectory, pipeline: pipeline))
            PeerAddressBook.remove(stateDirectory: environment.stateDirectory, pipeline: pipeline)
            if config.privateKeyFile == nil, config.privateKey == nil { unlink(WireGuardState.defaultKeyPath(environment.stateDirectory, pipeline: pipeline)) }
        }
    }

    func reconcile() async -> ReconcileReport {
        do {
            let report = try converge()
            return ReconcileReport(repaired: report.repairs, problems: refusedPurge.withLockedValue { $0 }.map { [$0] } ?? [])
        } catch {
            return ReconcileReport(problems: ["the interface \(config.interface) does not match the configuration: \(error)"])
        }
    }

    // MARK: - Converge

    struct ConvergeReport {
        var repairs: [String] = []
    }

    /// Takes device, link, addresses and peers to the configuration.
    @discardableResult
    private func converge() throws -> ConvergeReport {
        try converging.withLock {
            var report = ConvergeReport()
            let stateDirectory = environment.stateDirectory
            let previous = WireGuardState.load(stateDirectory, pipeline: pipeline)
            var state = previous ?? WireGuardState(interface: config.interface)
            let ownedBefore = previous?.interface == config.interface
            // Peers are purged only on an interface this stage created: never take over someone else's.
            if !ownedBefore, if_nametoindex(config.interface) != 0 {
                throw WireGuardError(
                    description: "interface \(config.interface) exists and was not created by this stage; remove it or choose another name")
            }
            state.interface = config.interface
            let privateKey = try interfacePrivateKey()
            var peers = try desiredPeers(&state)
            // Generated keys and given addresses are kept before anything uses them.
            try state.save(stateDirectory, pipeline: pipeline)
            // Other stages of the pipeline (enforce.nftables profiles) refer to peers by name.
            try PeerAddressBook.publish(
                Dictionary(peers.map { ($0.name, $0.allowedIPs) }) { first, _ in first }, stateDirectory: stateDirectory, pipeline: pipeline)

            // The backend that created the interface keeps it; a new one gets the kernel's where it has one.
            let device = try DeviceChoice.device(interface: config.interface, backend: config.backend, createdBy: ownedBefore ? (state.backend ?? "userspace") : nil)
            currentDevice.withLockedValue { $0 = device }
            // One read of the device serves both questions: is it there, and what does it hold.
            var actual: DeviceState
            if if_nametoindex(config.interface) != 0, let running = try? device.get() {
                actual = running
            } else {
                try device.create()
                if ownedBefore { report.repairs.append("interface \(config.interface) created again") }
                logger.info("created the interface", metadata: ["interface": "\(config.interface)", "backend": "\(device.backend)"])
                actual = try device.get()
            }
            if state.backend != device.backend {
                state.backend = device.backend
                try state.save(stateDirectory, pipeline: pipeline)
            }
            let ifindex = Int32(if_nametoindex(config.interface))
            guard ifindex != 0 else { throw WireGuardError(description: "interface \(config.interface) vanished") }
            try Self.check(weir_link_configure(ifindex, 1, UInt32(config.mtu)))
            report.repairs += try convergeAddresses(ifindex)

            let fullTunnelTable = TunnelRouting.fullTunnelTable(fwmark: config.fwmark, peers: peers)
            report.repairs += try TunnelRouting(interface: config.interface, ifindex: ifindex, localNetworks: config.addresses.map(\.network))
                .converge(peers: peers, fullTunnelTable: fullTunnelTable)
            if state.fullTunnelTable != fullTunnelTable {
                state.fullTunnelTable = fullTunnelTable
                try state.save(stateDirectory, pipeline: pipeline)
            }

            let resets = chooseEndpoints(&peers, actual: actual, now: Date())
            try device.remove(peers: resets)
            if !resets.isEmpty { actual = try device.get() }
            let overQuota = accountUsage(&state, actual: actual, peers: peers)
            // A full tunnel marks the device's own packets so they bypass it.
            let desired = DesiredDevice(
                privateKey: privateKey, listenPort: config.listenPort, fwmark: fullTunnelTable ?? config.fwmark,
                peers: peers.filter { !overQuota.contains($0.name) })
            let known = Set(state.configured.compactMap { WireGuardKey(base64: $0) })
            let plan = PeerPlan.make(desired: desired, actual: actual, known: known)
            let purgeShare = actual.peers.isEmpty ? 0 : Double(plan.purge.count) / Double(actual.peers.count)
            let purging = plan.purge.isEmpty || purgeShare <= config.maxPurgeShare
            if !purging {
                let message = "\(plan.purge.count) of \(actual.peers.count) peers on \(config.interface) are not in the configuration; "
                    + "removing more than max_purge_share (\(config.maxPurgeShare)) was refused"
                if refusedPurge.withLockedValue({ $0 }) != message { logger.error("\(message)") }
                refusedPurge.withLockedValue { $0 = message }
            } else {
                refusedPurge.withLockedValue { $0 = nil }
            }
            let applying = ContinuousClock.now
            try device.apply(plan, purging: purging)
            if !plan.isEmpty {
                logger.info(
                    "peers applied",
                    metadata: [
                        "interface": "\(config.interface)", "added": "\(plan.add.count)", "updated": "\(plan.update.count)",
                        "removed": "\(plan.remove.count)", "purged": "\(purging ? plan.purge.count : 0)",
                        "took": "\(ContinuousClock.now - applying)",
                    ])
            }
            if purging, !plan.purge.isEmpty { report.repairs.append("removed \(plan.purge.count) peers the configuration does not have") }
            // Disabled peers count as configured: their removal is intended, and they come back.
            state.configured = peers.map(\.publicKey.base64)
            usage.withLockedValue { $0 = state.usage }
            try state.save(stateDirectory, pipeline: pipeline)
            names.withLockedValue { $0 = Dictionary(peers.map { ($0.publicKey, $0.name) }) { first, _ in first } }
            return report
        }
    }

    /// The configured peers with their keys (generated ones kept in `state`), pool addresses and pre-shared
    /// keys; endpoints are the preferred ones until `chooseEndpoints` runs.
    private func desiredPeers(_ state: inout WireGuardState) throws -> [DesiredPeer] {
        let pooled = try state.allocate(peers: config.peers, pool: config.pool, interfaceAddresses: config.addresses)
        state.generatedKeys = state.generatedKeys.filter { name, _ in config.peers.contains { $0.name == name && $0.publicKey == nil } }
        return try config.peers.map { peer in
            let publicKey: WireGuardKey
            if let text = peer.publicKey, let key = WireGuardKey(base64: text) {
                publicKey = key
            } else {
                let key = state.generatedKeys[peer.name].flatMap { WireGuardKey(base64: $0) } ?? WireGuardKey.generatePrivate()
                state.generatedKeys[peer.name] = key.base64
                publicKey = key.publicKey
            }
            return DesiredPeer(
                name: peer.name, publicKey: publicKey, presharedKey: try peer.presharedKeyFile.map(Self.readKey),
                endpoint: peer.endpoints.first.flatMap(deviceEndpoint), persistentKeepalive: peer.persistentKeepalive,
                allowedIPs: peer.allowedIPs.isEmpty ? pooled[peer.name] ?? [] : peer.allowedIPs)
        }
    }

    /// Counts what each peer moved since the last reading against its quota (in `state`) and returns the
    /// peers over it, which leave the device; logs who crossed the line either way.
    private func accountUsage(_ state: inout WireGuardState, actual: DeviceState, peers: [DesiredPeer]) -> Set<String> {
        state.rollPeriods(config.peers, now: Date())
        state.account(actual, names: Dictionary(peers.map { ($0.publicKey, $0.name) }) { first, _ in first })
        let overQuota = Set(config.peers.filter(state.isOverQuota).map(\.name))
        let before = disabled.withLockedValue { $0 }
        for name in overQuota.subtracting(before).sorted() {
            logger.notice("peer is over its quota: taken off the interface until the period ends or the quota is raised", metadata: ["peer": "\(name)"])
        }
        for name in before.subtracting(overQuota).sorted() {
            logger.info("peer is within its quota again", metadata: ["peer": "\(name)"])
        }
        disabled.withLockedValue { $0 = overQuota }
        return overQuota
    }

    /// Sets each peer's endpoint to its failover choice (`EndpointFailover`). Returns the peers whose
    /// endpoint changed and that must start a new session (removed here, added again by the plan, so the
    /// device handshakes with the new endpoint at once instead of after 15 s of silence).
    private func chooseEndpoints(_ peers: inout [DesiredPeer], actual: DeviceState, now: Date) -> [WireGuardKey] {
        var resets: [WireGuardKey] = []
        failovers.withLockedValue { failovers in
            let configured = Dictionary(config.peers.map { ($0.name, $0) }) { first, _ in first }
            failovers = failovers.filter { (configured[$0.key]?.endpoints.count ?? 0) > 1 }
            for index in peers.indices {
                guard let peer = configured[peers[index].name], peer.endpoints.count > 1 else { continue }
                let after = Double(peer.failoverAfter.components.seconds)
                var failover = failovers[peer.name].flatMap { $0.count == peer.endpoints.count && $0.failoverAfter == after ? $0 : nil }
                    ?? EndpointFailover(count: peer.endpoints.count, failoverAfter: after, now: now)
                let device = actual.peers.first { $0.publicKey == peers[index].publicKey }
                let handshake = device.flatMap { $0.lastHandshake > 0 ? Date(timeIntervalSince1970: $0.lastHandshake) : nil }
                if case .switchTo(let next) = failover.observe(handshake: handshake, receiveBytes: device?.receiveBytes, now: now) {
                    logger.notice(
                        "peer switches endpoint", metadata: ["peer": "\(peer.name)", "endpoint": "\(peer.endpoints[next])", "preferred": "\(next == 0)"])
                    if device != nil { resets.append(peers[index].publicKey) }
                }
                failovers[peer.name] = failover
                peers[index].endpoint = deviceEndpoint(peer.endpoints[failover.index])
            }
        }
        return resets
    }

    /// An endpoint as the device takes it (an address and port): a host name is resolved at every converge,
    /// so a name that moves is followed within `reconcile_interval`. nil when it does not resolve now: the
    /// device keeps the endpoint it has.
    private func deviceEndpoint(_ endpoint: HostPort) -> String? {
        if endpoint.isIPLiteral { return endpoint.description }
        do {
            guard let address = try Resolver.getaddrinfo(host: endpoint.host, port: endpoint.port, datagram: true).first, let ip = address.ipAddress else {
                return nil
            }
            return address.protocol == .inet6 ? "[\(ip)]:\(endpoint.port)" : "\(ip):\(endpoint.port)"
        } catch {
            logger.warning("endpoint does not resolve; the peer keeps its current one", metadata: ["endpoint": "\(endpoint)", "error": "\(error)"])
            return nil
        }
    }

    /// The interface's private key: the configured file, or one generated once in the state directory.
    private func interfacePrivateKey() throws -> WireGuardKey {
        if let key = config.privateKey { return key }
        if let file = config.privateKeyFile { return try Self.readKey(file) }
        let path = WireGuardState.defaultKeyPath(environment.stateDirectory, pipeline: pipeline)
        if FileManager.default.fileExists(atPath: path) { return try Self.readKey(path) }
        let key = WireGuardKey.generatePrivate()
        try FileManager.default.createDirectory(
            atPath: WireGuardState.directory(environment.stateDirectory), withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try PrivateFile.write(Array((key.base64 + "\n").utf8), to: path)
        logger.info("generated the interface's private key", metadata: ["file": "\(path)", "public_key": "\(key.publicKey)"])
        return key
    }

    static func readKey(_ path: String) throws -> WireGuardKey {
        guard let data = FileManager.default.contents(atPath: path), let key = WireGuardKey(base64: String(decoding: data, as: UTF8.self)) else {
            throw WireGuardError(description: "\(path) does not hold a WireGuard key (base64)")
        }
        return key
    }

    /// Adds the configured addresses that are missing and removes the others (link-local ones excepted).
    private func convergeAddresses(_ ifindex: Int32) throws -> [String] {
        var pointer: UnsafeMutablePointer<weir_address>?
        var count = 0
        try Self.check(weir_address_list(ifindex, &pointer, &count))
        defer { free(pointer) }
        var current: Set<InterfaceAddress> = []
        for index in 0..<count {
            var address = pointer![index]
            let length = address.family == UInt8(AF_INET) ? 4 : 16
            let bytes = withUnsafeBytes(of: &address.address) { Array($0.prefix(length)) }
            current.insert(InterfaceAddress(address: IPNetwork(bytes: bytes, prefix: length * 8), prefix: Int(address.prefix_len)))
        }
        let wanted = Set(config.addresses)
        var changes: [String] = []
        for address in wanted.subtracting(current).sorted(by: { $0.description < $1.description }) {
            var message = Self.message(address)
            try Self.check(weir_address_add(ifindex, &message))
            changes.append("address \(address) added to \(config.interface)")
        }
        for address in current.subtracting(wanted) {
            var message = Self.message(address)
            try Self.check(weir_address_delete(ifindex, &message))
            changes.append("address \(address) removed from \(config.interface)")
        }
        return changes
    }


    private static func message(_ address: InterfaceAddress) -> weir_address {
        var message = weir_address()
        message.family = UInt8(address.address.isIPv4 ? AF_INET : AF_INET6)
        message.prefix_len = UInt8(address.prefix)
        withUnsafeMutableBytes(of: &message.address) { $0.copyBytes(from: address.address.bytes) }
        return message
    }

    private static func check(_ result: Int32) throws {
        if result < 0 { throw WireGuardError(description: String(cString: weir_nft_last_error())) }
    }

    // MARK: - Metrics

    func collect(into exposition: inout ExpositionWriter) {
        guard let state = try? device.get() else { return }
        let names = names.withLockedValue { $0 }
        let now = Date().timeIntervalSince1970
        var counts: [String: UInt64] = ["connected": 0, "idle": 0, "never": 0]
        var samples: [(labels: [UInt8], peer: PeerState)] = []
        for peer in state.peers {
            let status = peer.lastHandshake == 0 ? "never" : (now - peer.lastHandshake < 180 ? "connected" : "idle")
            counts[status, default: 0] += 1
            guard let name = names[peer.publicKey] else { continue }
            var labels: [UInt8] = []
            labels.appendLabel("pipeline", pipeline)
            labels.append(UInt8(ascii: ","))
            labels.appendLabel("interface", config.interface)
            labels.append(UInt8(ascii: ","))
            labels.appendLabel("peer", name)
            samples.append((labels, peer))
        }
        for (family, value) in Self.peerFamilies {
            let name = Array(family.name.utf8)
            exposition.write(family) { body in
                for sample in samples { body.appendSample(name, labels: sample.labels, value: value(sample.peer)) }
            }
        }
        counts["disabled"] = UInt64(disabled.withLockedValue { $0.count })
        let usage = usage.withLockedValue { $0 }
        var quotaSamples: [(labels: [UInt8], used: UInt64, limit: UInt64?)] = []
        for peer in config.peers {
            var labels: [UInt8] = []
            labels.appendLabel("pipeline", pipeline)
            labels.append(UInt8(ascii: ","))
            labels.appendLabel("interface", config.interface)
            labels.append(UInt8(ascii: ","))
            labels.appendLabel("peer", peer.name)
            quotaSamples.append((labels, usage[peer.name]?.used ?? 0, peer.quota?.limit))
        }
        for (family, limits) in [(Self.quotaUsed, false), (Self.quotaLimit, true)] {
            let name = Array(family.name.utf8)
            exposition.write(family) { body in
                for sample in quotaSamples {
                    if limits {
                        if let limit = sample.limit { body.appendSample(name, labels: sample.labels, value: limit) }
                    } else {
                        body.appendSample(name, labels: sample.labels, value: sample.used)
                    }
                }
            }
        }
        let peersName = Array(Self.peers.name.utf8)
        exposition.write(Self.peers) { body in
            for status in ["connected", "idle", "never", "disabled"] {
                var labels: [UInt8] = []
                labels.appendLabel("pipeline", pipeline)
                labels.append(UInt8(ascii: ","))
                labels.appendLabel("interface", config.interface)
                labels.append(UInt8(ascii: ","))
                labels.appendLabel("state", status)
                body.appendSample(peersName, labels: labels, value: counts[status] ?? 0)
            }
        }
    }

    private static let peerFamilies: [(MetricFamily, @Sendable (PeerState) -> UInt64)] = [
        (MetricFamily("weir_wireguard_peer_receive_bytes_total", .counter, help: "Bytes received from the peer through the tunnel."), { $0.receiveBytes }),
        (MetricFamily("weir_wireguard_peer_transmit_bytes_total", .counter, help: "Bytes sent to the peer through the tunnel."), { $0.transmitBytes }),
        (
            MetricFamily("weir_wireguard_peer_last_handshake_timestamp_seconds", .gauge, help: "Unix time of the peer's latest handshake (0: never)."),
            { UInt64($0.lastHandshake) }
        ),
    ]
    private static let peers = MetricFamily(
        "weir_wireguard_peers", .gauge,
        help: "Peers by state: connected (handshake within 3 minutes), idle, never (on the interface), disabled (over quota, off it).")
    private static let quotaUsed = MetricFamily(
        "weir_wireguard_peer_period_bytes", .gauge, help: "Bytes the peer received and sent in its current quota period (a month without a quota).")
    private static let quotaLimit = MetricFamily(
        "weir_wireguard_peer_quota_bytes", .gauge, help: "The peer's transfer quota per period.")
}
