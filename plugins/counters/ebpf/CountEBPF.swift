import CWeirBPF
import Glibc
import Logging
import NIOConcurrencyHelpers
import WeirCore

/// The running `count.ebpf` stage: loads the counting programs with their pinned maps, attaches them at
/// tc ingress and egress of each interface, and renders the counters when `/metrics` is scraped.
final class CountEBPF: ServiceStage, ScrapeCollector {
    private let config: CountEBPFConfig
    private let pipeline: String
    private let listener: (any ListenerConfig)?
    private let pins: PinDirectory
    private let collectors: ScrapeCollectors
    private let report: IPCountReport
    private let logger: Logger

    private struct Running {
        let program: CountProgram
        var attachments: [TCAttachment]
        let interfaces: [Int32: String]
    }

    private let state = NIOLockedValueBox<Running?>(nil)
    /// The interfaces of the last successful start, until `stop`: kept while a re-attach fails, so the next
    /// reconcile tries again.
    private let watched = NIOLockedValueBox<[Int32: String]?>(nil)

    init(config: CountEBPFConfig, context: StageContext) {
        self.config = config
        self.pipeline = context.pipeline
        self.listener = context.listener
        self.pins = PinDirectory(
            root: context.environment.bpfPinDirectory, pipeline: context.pipeline, meaning: config.meaning,
            maxEntries: config.maxEntries)
        self.collectors = context.metrics.collectors
        self.report = IPCountReport(
            pipeline: context.pipeline, topN: config.topN, ipv4Prefix: config.ipv4Prefix, ipv6Prefix: config.ipv6Prefix)
        var logger = Logger(label: "weir.count.ebpf")
        logger[metadataKey: "pipeline"] = "\(context.pipeline)"
        self.logger = logger
    }

    // MARK: - Lifecycle

    func start() async throws {
        try startCounting(movingEntries: [:])
    }

    /// Loads, carries counters over and attaches. `moves` maps the ifindex of an interface that was created
    /// again to its new one: its entries follow it before anything is attached there.
    private func startCounting(movingEntries moves: [Int32: Int32]) throws {
        try state.withLockedValue { state in
            guard state == nil else { return }
            let interfaces = try resolveInterfaces()
            try pins.create()
            let program = try CountProgram(config: programConfig(), maxEntries: config.maxEntries, pinDirectory: pins.path)
            var running = Running(program: program, attachments: [], interfaces: Dictionary(interfaces.map { ($0.index, $0.name) }) { a, _ in a })
            do {
                if program.createdMaps { try carryOverCounters(into: program) }
                for (old, new) in moves {
                    let moved = try CountSnapshot.moveInterface(
                        fd: program.countsFD, capacity: config.maxEntries + config.maxEntries / 8 + 64, from: UInt32(old), to: UInt32(new))
                    logger.debug("moved counters to the interface's new index", metadata: ["entries": "\(moved)", "from": "\(old)", "to": "\(new)"])
                }
                var mode = config.attach
                let handle = TCAttachment.clsactHandle(pipeline: pipeline)
                for interface in interfaces {
                    for ingress in [true, false] {
                        let (attachment, used) = try TCAttachment.attach(
                            programFD: program.programFD(ingress: ingress), interface: interface, ingress: ingress, mode: mode, handle: handle)
                        running.attachments.append(attachment)
                        mode = used
                    }
                }
                PinUsers.shared.add(self, pins.path)
                state = running
                watched.withLockedValue { $0 = running.interfaces }
                logger.info(
                    "counting", metadata: ["interfaces": "\(interfaces.map(\.name))", "attach": "\(mode)", "pins": "\(pins.path)"])
            } catch {
                Self.release(running)
                throw error
            }
        }
        collectors.add(self)
    }

    func stop() async {
        watched.withLockedValue { $0 = nil }
        detach()
    }

    private func detach() {
        collectors.remove(self)
        let running = state.withLockedValue { state in
            defer { state = nil }
            return state
        }
        if let running {
            Self.release(running)
            logger.info("stopped counting")
        }
    }

    /// An interface deleted and created again has lost the programs attached to it: once every interface is
    /// back, the stage attaches again (the pinned counters carry on).
    func reconcile() async -> ReconcileReport {
        guard let interfaces = watched.withLockedValue({ $0 }) else { return ReconcileReport() }
        let attached = state.withLockedValue { $0 != nil }
        var report = ReconcileReport()
        var recreated: [String] = []
        var moves: [Int32: Int32] = [:]
        for (index, name) in interfaces.sorted(by: { $0.value < $1.value }) {
            let now = if_nametoindex(name)
            if now == 0 {
                report.problems.append(ReconcileReport.missingInterface(name) + "; counting on it resumes when it is back")
            } else if Int32(now) != index {
                recreated.append(name)
                moves[index] = Int32(now)
            }
        }
        guard report.problems.isEmpty, !recreated.isEmpty || !attached else { return report }
        detach()
        let names = recreated.isEmpty ? interfaces.values.sorted() : recreated
        do {
            try startCounting(movingEntries: moves)
            report.repaired.append("counting attached again to \(names.joined(separator: ", "))")
        } catch {
            report.problems.append("counting is not attached to \(names.joined(separator: ", ")): \(error)")
        }
        return report
    }

    func retire() async {
        if PinUsers.shared.remove(self, pins.path) {
            PinDirectory.remove(pins.path)
            logger.info("removed pinned counters", metadata: ["pins": "\(pins.path)"])
        }
    }

    private static func release(_ running: Running) {
        for attachment in running.attachments.reversed() {
            do { try attachment.detach() } catch { Logger(label: "weir.count.ebpf").warning("detach failed: \(error)") }
        }
        running.program.close()
    }

    /// The configured interfaces, or those carrying the listener's address.
    private func resolveInterfaces() throws -> [NetworkInterface] {
        if !config.interfaces.isEmpty { return try config.interfaces.map(NetworkInterface.named) }
        guard let listener else { return [] }
        let found = NetworkInterface.carrying(listener.bindAddress)
        guard !found.isEmpty else { throw NetworkInterface.NotFound(name: "with address \(listener.bindAddress.host)") }
        return found
    }

    /// The program's load-time settings: the key, the prefixes, and for a forward pipeline the listener's
    /// port, protocol and (unless it is a wildcard) address.
    private func programConfig() -> weir_count_config {
        var settings = weir_count_config()
        settings.key_local = config.key == .localIP ? 1 : 0
        settings.ipv4_prefix = UInt8(config.ipv4Prefix)
        settings.ipv6_prefix = UInt8(config.ipv6Prefix)
        if config.interfaces.isEmpty, let listener {
            settings.port = UInt16(listener.bindAddress.port)
            settings.protocol = UInt8(listener.transport == .datagram ? IPPROTO_UDP : IPPROTO_TCP)
            if let address = IPAddressBytes(listener.bindAddress.host), !address.isUnspecified {
                settings.local_family = address.family
                withUnsafeMutableBytes(of: &settings.local_addr) { $0.copyBytes(from: address.bytes) }
            }
        }
        return settings
    }

    /// A fresh map after a change of `max_entries` continues from the previous one; directories of
    /// definitions nothing uses any more are removed (one a replaced stage still uses goes when it retires).
    private func carryOverCounters(into program: CountProgram) throws {
        let siblings = pins.siblings()
        if let previous = siblings.compatible.first {
            try PinDirectory.migrate(from: previous, countsFD: program.countsFD, statsFD: program.statsFD, maxEntries: config.maxEntries)
            logger.info("carried counters over", metadata: ["from": "\(previous)", "to": "\(pins.path)"])
        }
        for stale in siblings.unused { PinDirectory.remove(stale) }
    }

    // MARK: - Scrape

    func collect(into exposition: inout ExpositionWriter) {
        let started = ContinuousClock.now
        // Read under the lock so `stop` cannot close the map in the middle of the read.
        let read: (CountSnapshot, CountStats, [Int32: String])? = state.withLockedValue { state in
            guard let state else { return nil }
            do {
                // Slack beyond max_entries: entries replaced while the read walks the map may show up twice.
                let snapshot = try CountSnapshot.read(fd: state.program.countsFD, capacity: config.maxEntries + config.maxEntries / 8 + 64)
                return (snapshot, try CountStats.read(fd: state.program.statsFD), state.interfaces)
            } catch {
                logger.warning("reading the counters failed", metadata: ["error": "\(error)"])
                return nil
            }
        }
        guard let (snapshot, stats, interfaces) = read else { return }
        let readDone = ContinuousClock.now
        report.write(snapshot, stats: stats, maxEntries: config.maxEntries, interfaceName: { index in
            if let name = interfaces[Int32(index)] { return name }
            var buffer = [CChar](repeating: 0, count: Int(IF_NAMESIZE))
            return if_indextoname(index, &buffer).map { String(cString: $0) } ?? "ifindex\(index)"
        }, into: &exposition)
        logger.debug(
            "scraped counters",
            metadata: ["entries": "\(snapshot.count)", "read": "\(readDone - started)", "render": "\(ContinuousClock.now - readDone)"])
    }
}
