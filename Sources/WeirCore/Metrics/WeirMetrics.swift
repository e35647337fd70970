import Metrics
import NIOConcurrencyHelpers
import Prometheus

/// The agent's metric registry. Every Weir series is created here with its help text, so the exposition
/// passes `promtool check metrics`; swift-metrics is bootstrapped on the same registry for library metrics.
public final class WeirMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    /// Families written at scrape time (per-IP counters of eBPF stages).
    public let collectors = ScrapeCollectors()

    public let reloadsSucceeded: Prometheus.Counter
    public let reloadsFailed: Prometheus.Counter
    public let lastReloadSuccessful: Prometheus.Gauge
    public let lastReloadTimestamp: Prometheus.Gauge
    public let reloadDuration: DurationHistogram
    /// The coordinator connection's state, exported only while a coordinator is configured.
    public let coordinator = CoordinatorStatus()
    /// Certificates the running stages loaded, with when they expire.
    public let certificates = CertificateExpiries()
    /// Problems `/healthz` reports.
    public let health = HealthReport()

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        let reloadsHelp = "Configuration reloads by result."
        reloadsSucceeded = registry.makeCounter(name: "weir_config_reloads_total", labels: [("result", "success")], help: reloadsHelp)
        reloadsFailed = registry.makeCounter(name: "weir_config_reloads_total", labels: [("result", "failure")], help: reloadsHelp)
        lastReloadSuccessful = registry.makeGauge(
            name: "weir_config_last_reload_successful", help: "1 when the last configuration load or reload succeeded, else 0.")
        lastReloadTimestamp = registry.makeGauge(
            name: "weir_config_last_reload_timestamp_seconds", help: "Unix time of the last configuration load or reload attempt.")
        reloadDuration = registry.makeDurationHistogram(
            name: "weir_config_reload_duration_seconds", labels: [],
            buckets: [.milliseconds(1), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
                      .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10)],
            help: "Time from a reload's start (SIGHUP or a coordinator bundle) to its configuration applied or refused.")
        collectors.add(coordinator)
        collectors.add(certificates)
    }

    /// Points swift-metrics at this registry. Call once per process.
    public func bootstrapMetricsSystem() {
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
    }

    /// Per-destination traffic by pipeline: one table per pipeline id, kept while the pipeline exists (a
    /// changed pipeline keeps counting on it, like its other series).
    private let destinationTables = NIOLockedValueBox<[String: DestinationTraffic]>([:])
    /// `metrics.destinations_top`: destinations with series of their own per pipeline; for tables made from now on.
    public let destinationsTop = NIOLockedValueBox(AgentConfig.defaultDestinationsTop)

    public func pipeline(_ id: String) -> PipelineMetrics {
        let destinations = destinationTables.withLockedValue { tables in
            if let existing = tables[id] { return existing }
            let made = DestinationTraffic(pipeline: id, limit: destinationsTop.withLockedValue { $0 })
            tables[id] = made
            return made
        }
        return PipelineMetrics(
            pipeline: id, registry: registry, collectors: collectors, destinations: destinations,
            forgetDestinations: { [destinationTables, collectors] in
                destinationTables.withLockedValue { $0[id] = nil }
                collectors.remove(destinations)
            })
    }

    /// The Prometheus text exposition.
    public func render() -> [UInt8] {
        var output = registry.emitToBuffer()
        collectors.render(into: &output)
        return output
    }
}

/// The series of one pipeline. Asking the registry again for the same pipeline returns the same series,
/// so a changed pipeline keeps counting where its predecessor stopped.
public final class PipelineMetrics: Sendable {
    public let pipeline: String
    public let bytesIn: Prometheus.Counter
    public let bytesOut: Prometheus.Counter
    public let connectionsTotal: Prometheus.Counter
    public let connectionsActive: Prometheus.Gauge
    private let registry: PrometheusCollectorRegistry
    /// Where stages register scrape-time collectors for this pipeline's series.
    public let collectors: ScrapeCollectors
    private let errorCounters = NIOLockedValueBox<[String: Prometheus.Counter]>([:])
    /// Series stages add for this pipeline (per peer, per target), removed with it.
    private let stageCounters = NIOLockedValueBox<[String: Prometheus.Counter]>([:])
    private let stageGauges = NIOLockedValueBox<[String: Prometheus.Gauge]>([:])
    private let stageHistograms = NIOLockedValueBox<[String: DurationHistogram]>([:])
    /// Traffic per destination a client named; exported once the first such connection is counted.
    private let destinations: DestinationTraffic
    private let forgetDestinations: @Sendable () -> Void

    static let errorsHelp = "Errors by pipeline, stage and reason."

    init(
        pipeline: String, registry: PrometheusCollectorRegistry, collectors: ScrapeCollectors, destinations: DestinationTraffic,
        forgetDestinations: @escaping @Sendable () -> Void
    ) {
        self.pipeline = pipeline
        self.destinations = destinations
        self.forgetDestinations = forgetDestinations
        self.registry = registry
        self.collectors = collectors
        let bytesHelp = "Bytes forwarded; direction in is client to target, out is target to client."
        bytesIn = registry.makeCounter(
            name: "weir_pipeline_bytes_total", labels: [("pipeline", pipeline), ("direction", "in")], help: bytesHelp)
        bytesOut = registry.makeCounter(
            name: "weir_pipeline_bytes_total", labels: [("pipeline", pipeline), ("direction", "out")], help: bytesHelp)
        connectionsTotal = registry.makeCounter(
            name: "weir_pipeline_connections_total", labels: [("pipeline", pipeline)],
            help: "Client connections (TCP) or sessions (UDP) accepted.")
        connectionsActive = registry.makeGauge(
            name: "weir_pipeline_connections_active", labels: [("pipeline", pipeline)],
            help: "Client connections (TCP) or sessions (UDP) open now.")
    }

    /// A connection to `destination` (the name as the client asked for it) begins: where its bytes are
    /// counted per destination. Call `destinationClosed` when it ends.
    public func destinationOpened(_ destination: String) -> DestinationTraffic.Slot {
        if destinations.firstUse() { collectors.add(destinations) }
        return destinations.opened(destination)
    }

    public func destinationClosed(_ slot: DestinationTraffic.Slot) { destinations.closed(slot) }

    /// Counts one error of `reason` in the stage named `stage` (its type, e.g. `connect.tcp`).
    public func error(stage: String, reason: String) {
        let key = stage + "\u{0}" + reason
        let counter = errorCounters.withLockedValue { counters in
            if let existing = counters[key] { return existing }
            let made = registry.makeCounter(
                name: "weir_pipeline_errors_total", labels: [("pipeline", pipeline), ("stage", stage), ("reason", reason)],
                help: Self.errorsHelp)
            counters[key] = made
            return made
        }
        counter.increment()
    }

    /// A counter of a stage's own, labelled with this pipeline first; made on first use, removed with the pipeline.
    public func counter(_ name: String, labels: [(String, String)], help: String) -> Prometheus.Counter {
        Self.memoized(stageCounters, name, [("pipeline", pipeline)] + labels) { registry.makeCounter(name: name, labels: $0, help: help) }
    }

    /// A gauge of a stage's own, labelled with this pipeline first; made on first use, removed with the pipeline.
    public func gauge(_ name: String, labels: [(String, String)], help: String) -> Prometheus.Gauge {
        Self.memoized(stageGauges, name, [("pipeline", pipeline)] + labels) { registry.makeGauge(name: name, labels: $0, help: help) }
    }

    /// A duration histogram of a stage's own (seconds in the exposition), labelled like `counter`.
    public func durationHistogram(_ name: String, labels: [(String, String)], buckets: [Duration], help: String) -> DurationHistogram {
        Self.memoized(stageHistograms, name, [("pipeline", pipeline)] + labels) {
            registry.makeDurationHistogram(name: name, labels: $0, buckets: buckets, help: help)
        }
    }

    private static func memoized<Series>(
        _ box: NIOLockedValueBox<[String: Series]>, _ name: String, _ labels: [(String, String)], make: ([(String, String)]) -> Series
    ) -> Series {
        let key = name + labels.map { "\u{0}\($0.0)=\($0.1)" }.joined()
        return box.withLockedValue { series in
            if let existing = series[key] { return existing }
            let made = make(labels)
            series[key] = made
            return made
        }
    }

    /// Removes this pipeline's series, when the pipeline is removed from the configuration.
    public func unregister() {
        forgetDestinations()
        registry.unregisterCounter(bytesIn)
        registry.unregisterCounter(bytesOut)
        registry.unregisterCounter(connectionsTotal)
        registry.unregisterGauge(connectionsActive)
        let errors = errorCounters.withLockedValue { counters in
            defer { counters = [:] }
            return Array(counters.values)
        }
        errors.forEach(registry.unregisterCounter)
        stageCounters.withLockedValue { counters in
            counters.values.forEach(registry.unregisterCounter)
            counters = [:]
        }
        stageGauges.withLockedValue { gauges in
            gauges.values.forEach(registry.unregisterGauge)
            gauges = [:]
        }
        stageHistograms.withLockedValue { histograms in
            histograms.values.forEach(registry.unregisterDurationHistogram)
            histograms = [:]
        }
    }
}
