import Glibc
import Logging
import NIOConcurrencyHelpers
import WeirCore

/// The running `shape.tc` stage. `start` makes the kernel's HTB classes match the config (a reload changes
/// only what changed); `stop` leaves the shaping in force, as a restarting agent should not unshape a link;
/// `retire` (the stage or its pipeline was removed) deletes its classes, and the last stage on a device
/// gives the device back as it was.
final class ShapeTC: ServiceStage, ScrapeCollector {
    private let config: ShapeTCConfig
    private let pipeline: String
    private let listener: (port: Int, transport: Transport, address: BindAddress)?
    private let environment: StageEnvironment
    private let collectors: ScrapeCollectors
    private let logger: Logger
    private let applied = NIOLockedValueBox<[(interface: String, side: ShapeSide)]>([])

    init(config: ShapeTCConfig, context: StageContext) {
        self.config = config
        self.pipeline = context.pipeline
        if let listener = context.listener, let transport = listener.transport {
            self.listener = (listener.bindAddress.port, transport, listener.bindAddress)
        } else {
            self.listener = nil
        }
        self.environment = context.environment
        self.collectors = context.metrics.collectors
        var logger = Logger(label: "weir.shape.tc")
        logger[metadataKey: "pipeline"] = "\(context.pipeline)"
        self.logger = logger
    }

    /// Peer names in client_rates become the addresses the pipeline's wireguard stage published for them.
    private var shape: StageShape {
        var resolved = config
        if resolved.clientRates.contains(where: { $0.peers != nil }) {
            let book = PeerAddressBook.addresses(stateDirectory: environment.stateDirectory, pipeline: pipeline)
            resolved.clientRates = resolved.clientRates.map { rate in
                var rate = rate
                rate.clients += (rate.peers ?? []).flatMap { book[$0] ?? [] }
                rate.peers = nil
                return rate
            }
        }
        return StageShape(config: resolved, listener: listener.map { ($0.port, $0.transport) })
    }

    func start() async throws {
        let interfaces = try resolveInterfaces()
        var done: [(interface: String, side: ShapeSide)] = []
        do {
            for interface in interfaces {
                for side in config.direction.sides {
                    try ShapingDevices.shared.apply(
                        owner: pipeline, shape: shape, interface: interface, side: side, stateDirectory: environment.stateDirectory)
                    done.append((interface, side))
                }
            }
        } catch {
            // What this start added on other devices goes again, unless a predecessor still owns it.
            if !DeviceUsers.shared.isUsed(pipeline) {
                for (interface, side) in done {
                    try? ShapingDevices.shared.remove(owner: pipeline, interface: interface, side: side, stateDirectory: environment.stateDirectory)
                }
            }
            throw error
        }
        DeviceUsers.shared.add(self, pipeline)
        applied.withLockedValue { $0 = done }
        // A reload that moved the stage to other interfaces or directions: the ones it left are given back.
        ShapingDevices.shared.removeElsewhere(
            owner: pipeline, keeping: Set(done.map { "\($0.interface).\($0.side.rawValue)" }), stateDirectory: environment.stateDirectory)
        logger.info(
            "shaping",
            metadata: [
                "interfaces": "\(interfaces)", "direction": "\(config.direction.rawValue)", "per": "\(config.per.rawValue)",
                "rate": "\(RateText.bits(config.rate))", "ceil": "\(RateText.bits(config.ceil))",
            ])
        collectors.add(self)
    }

    func stop() async {
        collectors.remove(self)
    }

    /// An interface deleted and created again has lost its qdiscs and filters (and an IFB its redirect):
    /// they are applied again once it is back.
    func reconcile() async -> ReconcileReport {
        var report = ReconcileReport()
        for (interface, side) in applied.withLockedValue({ $0 }) {
            guard TrafficControl.index(of: interface) != nil else {
                report.problems.append(ReconcileReport.missingInterface(interface) + "; its \(side.rawValue) shaping returns with it")
                continue
            }
            guard !ShapingDevices.shared.isIntact(owner: pipeline, interface: interface, side: side) else { continue }
            do {
                try ShapingDevices.shared.apply(
                    owner: pipeline, shape: shape, interface: interface, side: side, stateDirectory: environment.stateDirectory)
                report.repaired.append("shaping of \(interface) \(side.rawValue) applied again")
            } catch {
                report.problems.append("shaping of \(interface) \(side.rawValue) is not in force: \(error)")
            }
        }
        return report
    }

    func retire() async {
        guard DeviceUsers.shared.remove(self, pipeline) else { return }
        for (interface, side) in applied.withLockedValue({ $0 }) {
            do {
                try ShapingDevices.shared.remove(owner: pipeline, interface: interface, side: side, stateDirectory: environment.stateDirectory)
            } catch {
                logger.error("removing the pipeline's classes failed", metadata: ["interface": "\(interface)", "error": "\(error)"])
            }
        }
        logger.info("stopped shaping")
    }

    /// The configured interface, or those carrying the listener's address (every one but loopback for a
    /// wildcard address).
    private func resolveInterfaces() throws -> [String] {
        if let interface = config.interface {
            return [try NetworkInterface.named(interface).name]
        }
        guard let listener else { return [] }
        let found: [String]
        if let address = IPAddressBytes(listener.address.host), !address.isUnspecified {
            found = NetworkInterface.carrying(listener.address).map(\.name)
        } else {
            found = Set(NetworkInterface.assignedAddresses().filter { !$0.loopback }.map(\.name)).sorted()
        }
        guard !found.isEmpty else {
            throw ShapingDevices.ShapeError(description: "no interface carries the listener's address \(listener.address.host)")
        }
        return found
    }

    // MARK: - Scrape

    func collect(into exposition: inout ExpositionWriter) {
        let devices = applied.withLockedValue { $0 }
        // Each class's labels are rendered once and shared by its six families.
        var samples: [(labels: [UInt8], reading: ClassReading)] = []
        for (interface, side) in devices {
            for reading in ShapingDevices.shared.readings(owner: pipeline, interface: interface, side: side) {
                var labels: [UInt8] = []
                labels.appendLabel("pipeline", pipeline)
                for (key, text) in [("class", reading.label), ("interface", interface), ("direction", side.rawValue)] {
                    labels.append(UInt8(ascii: ","))
                    labels.appendLabel(key, text)
                }
                samples.append((labels, reading))
            }
        }
        guard !samples.isEmpty else { return }
        for (family, value) in Self.families {
            let name = Array(family.name.utf8)
            exposition.write(family) { body in
                for sample in samples { body.appendSample(name, labels: sample.labels, value: value(sample.reading)) }
            }
        }
    }

    private static let families: [(MetricFamily, @Sendable (ClassReading) -> UInt64)] = [
        (MetricFamily("weir_tc_class_bytes_total", .counter, help: "Bytes the HTB class sent (link-layer length)."), { $0.bytes }),
        (MetricFamily("weir_tc_class_packets_total", .counter, help: "Packets the HTB class sent."), { $0.packets }),
        (MetricFamily("weir_tc_class_drops_total", .counter, help: "Packets the class's queue dropped."), { UInt64($0.drops) }),
        (
            MetricFamily("weir_tc_class_overlimits_total", .counter, help: "Times the class was over its rate and had to wait or borrow."),
            { UInt64($0.overlimits) }
        ),
        (MetricFamily("weir_tc_class_rate_bits", .gauge, help: "The class's configured rate in bits per second."), { $0.rate * 8 }),
        (MetricFamily("weir_tc_class_ceil_bits", .gauge, help: "The class's configured ceiling in bits per second."), { $0.ceil * 8 }),
    ]
}

/// Which stage instances shape for a pipeline: on reload the successor starts before the predecessor retires,
/// and only the last one removes the pipeline's classes.
enum DeviceUsers {
    static let shared = SharedStateUsers()
}
