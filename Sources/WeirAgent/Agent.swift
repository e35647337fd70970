import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals
import WeirCore
import WeirCoordinatorProtocol

/// The agent process: loads the configuration, runs the pipelines and the metrics endpoint, reloads on
/// SIGHUP, and on graceful shutdown (SIGTERM/SIGINT) stops accepting and drains.
public actor Agent: Service {
    /// Startup failures, mapped to exit codes by the CLI.
    public enum StartError: Error, CustomStringConvertible {
        case invalidConfig(ConfigErrors)
        case startFailed(any Error)
        case stateDirectoryInUse(StateDirectoryLock.Held)

        public var description: String {
            switch self {
            case .invalidConfig(let errors): return "invalid configuration:\n\(errors)"
            case .startFailed(let error): return "\(error)"
            case .stateDirectoryInUse(let held): return "\(held)"
            }
        }
    }

    private let configPath: String
    private let loader: ConfigLoader
    private let metrics: WeirMetrics
    private let logger: Logger
    private let group: any EventLoopGroup
    private let supervisor: Supervisor
    private let metricsServer: MetricsServer
    private var metricsChannel: (any Channel)?
    private var metricsAddress: BindAddress?
    /// The configuration running now.
    private var running: AgentConfig?
    private var coordinatorClient: Task<Void, Never>?
    /// Held while the agent runs: one agent per state directory.
    private var stateLock: StateDirectoryLock?
    private var coordinatorSettings: CoordinatorSettings?
    /// The metrics address the coordinator connection announced; a new one reconnects to announce it.
    private var announcedMetricsAddress: BindAddress?
    /// Set once shutdown begins: a bundle that arrives after that is not applied.
    private var stopping = false
    /// The last reload or bundle apply queued; the next waits for it (see `serially`).
    private var queueTail: Task<Void, Never>?
    /// Asks for a reconcile of the service stages; requests made while one waits collapse into it.
    private var reconcileRequests: AsyncStream<Void>.Continuation?
    private var reconciler: Task<Void, Never>?
    /// Service stages are re-checked this often even when no interface changed (notifications can be lost,
    /// and someone may remove a qdisc or route by hand), or sooner when a stage asks (`reconcile_interval`).
    static let reconcileInterval = Duration.seconds(30)

    /// Why a reload did not take effect; the running configuration stays.
    public enum ReloadFailure: Error, CustomStringConvertible {
        case invalid(ConfigErrors)
        case applyFailed(any Error)

        /// One line per problem, as an agent reports them to its coordinator.
        public var messages: [String] {
            switch self {
            case .invalid(let errors): return errors.diagnostics.map(\.description)
            case .applyFailed(let error): return ["\(error)"]
            }
        }

        public var description: String { messages.joined(separator: "\n") }
    }

    public init(configPath: String, registry: StageRegistry, metrics: WeirMetrics, logger: Logger) {
        self.configPath = configPath
        self.loader = ConfigLoader(registry: registry)
        self.metrics = metrics
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup.singleton
        self.supervisor = Supervisor(group: group, metrics: metrics, logger: logger, stageTypes: registry.all)
        self.metricsServer = MetricsServer(metrics: metrics, group: group)
    }

    public func run() async throws {
        // Before anything opens a socket: two descriptors per forwarded connection.
        let descriptors = DescriptorLimit.raiseSoftToHard()
        let config: AgentConfig
        do {
            config = try loader.load(path: configPath)
        } catch {
            throw StartError.invalidConfig(error)
        }
        WeirLogHandler.settings.update(level: config.logLevel, format: config.logFormat)
        // Before anything touches the kernel or the state directory.
        do { stateLock = try StateDirectoryLock(directory: config.stateDirectory) } catch { throw StartError.stateDirectoryInUse(error) }
        do {
            // The stream relay's threads (and their few descriptors) from the start, not from the first
            // listen.tcp a reload adds.
            try StreamRelayEngine.start()
            // Pipelines first: once /healthz answers, every pipeline is serving.
            metrics.destinationsTop.withLockedValue { $0 = config.destinationsTop }
            try await supervisor.apply(config)
            try await applyMetricsListen(config.metricsListen)
        } catch {
            await supervisor.shutdown()
            throw StartError.startFailed(error)
        }
        recordReload(success: true)
        running = config
        logger.info(
            "agent started",
            metadata: [
                "id": "\(config.agentID)", "pipelines": "\(config.pipelines.count)", "config": "\(configPath)",
                "max_descriptors": "\(descriptors.soft)",
            ])
        updateCoordinatorClient(config)
        startReconciler()

        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            _ = await reload()
        }

        logger.info("shutting down: draining connections", metadata: ["grace": "\(config.shutdownGrace)"])
        // Not awaited: the client says goodbye at once, but its TLS close may wait seconds for the peer.
        stopping = true
        coordinatorClient?.cancel()
        // A reconcile in progress finishes first: it must not restart a stage that shutdown stopped.
        reconciler?.cancel()
        await reconciler?.value
        await supervisor.shutdown()
        try? await metricsChannel?.close()
        logger.info("stopped")
    }

    /// Validate, diff, apply; on any failure the running configuration stays as it was.
    @discardableResult
    func reload() async -> ReloadFailure? {
        let failure = await serially { await self.reloadNow() }
        // Stages the reload left running are checked too: an interface may have come back meanwhile.
        reconcileRequests?.yield()
        return failure
    }

    // MARK: - Reconcile

    /// Re-checks the service stages (`Supervisor.reconcile`) when interfaces or addresses change, after each
    /// reload, and every `reconcileInterval`. Bursts of notifications (an interface created with its
    /// addresses) settle for a moment first and cost one reconcile.
    private func startReconciler() {
        let (requests, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        reconcileRequests = continuation
        var links: AsyncStream<[LinkWatch.Change]>?
        do {
            links = try LinkWatch.changes()
        } catch {
            logger.warning(
                "cannot watch interfaces; service stages are re-checked after reloads and every \(Self.reconcileInterval) only",
                metadata: ["error": "\(error)"])
        }
        let logger = logger
        continuation.yield()  // once at start: what the first apply could not see
        reconciler = Task {
            await withTaskGroup(of: Void.self) { group in
                if let links {
                    group.addTask {
                        for await batch in links {
                            logger.debug("interfaces changed", metadata: ["changes": "\(batch)"])
                            continuation.yield()
                        }
                    }
                }
                group.addTask {
                    // The interval is asked again every quarter second, not once per sleep: a reload that adds a
                    // stage wanting reconciles every second must not wait out a 30 s sleep begun before it.
                    var last = ContinuousClock.now
                    while (try? await Task.sleep(for: .milliseconds(250))) != nil {
                        let interval = await self.supervisor.reconcileInterval(atMost: Self.reconcileInterval)
                        guard ContinuousClock.now - last >= interval else { continue }
                        last = .now
                        continuation.yield()
                    }
                }
                group.addTask {
                    for await _ in requests {
                        guard (try? await Task.sleep(for: .milliseconds(100))) != nil else { break }
                        await self.reconcileStages()
                    }
                }
                await group.waitForAll()
            }
        }
    }

    private func reconcileStages() async {
        guard !stopping else { return }
        await serially { await self.supervisor.reconcile() }
    }

    /// Runs reloads and bundle applies one at a time, in the order they came: the actor alone would let a
    /// SIGHUP reload start while a bundle's reload waits for the supervisor, and a failed bundle's rollback
    /// could then undo the wrong files.
    private func serially<T: Sendable>(_ work: @escaping @Sendable () async -> T) async -> T {
        let previous = queueTail
        let task = Task {
            await previous?.value
            return await work()
        }
        queueTail = Task { _ = await task.value }
        return await task.value
    }

    private func reloadNow() async -> ReloadFailure? {
        let started = ContinuousClock.now
        defer { metrics.reloadDuration.record(ContinuousClock.now - started) }
        logger.info("reloading configuration", metadata: ["config": "\(configPath)"])
        let config: AgentConfig
        do {
            config = try loader.load(path: configPath)
        } catch {
            logger.error("reload rejected: invalid configuration; keeping the running one\n\(error)")
            recordReload(success: false)
            return .invalid(error)
        }
        let previousMetrics = metricsChannel
        let previousAddress = metricsAddress
        do {
            try await applyMetricsListen(config.metricsListen, closePrevious: false)
            metrics.destinationsTop.withLockedValue { $0 = config.destinationsTop }
            try await supervisor.apply(config)
        } catch {
            if metricsChannel !== previousMetrics {
                try? await metricsChannel?.close()
                (metricsChannel, metricsAddress) = (previousMetrics, previousAddress)
            }
            logger.error("reload failed, rolled back; keeping the running configuration", metadata: ["error": "\(error)"])
            recordReload(success: false)
            return .applyFailed(error)
        }
        if metricsChannel !== previousMetrics { try? await previousMetrics?.close() }
        WeirLogHandler.settings.update(level: config.logLevel, format: config.logFormat)
        recordReload(success: true)
        running = config
        updateCoordinatorClient(config)
        return nil
    }

    // MARK: - Coordinator

    /// Installs a bundle from the coordinator and reloads through the same path as SIGHUP. When the reload
    /// fails, the previous bundle goes back in place (the running configuration never changed) and the
    /// errors are returned for the NACK.
    func apply(_ bundle: ConfigBundle) async -> [String]? {
        let errors = await serially { await self.applyNow(bundle) }
        reconcileRequests?.yield()
        return errors
    }

    private func applyNow(_ bundle: ConfigBundle) async -> [String]? {
        guard let config = running, !stopping else { return ["the agent is not running (starting or stopping)"] }
        guard bundle.isIntact else { return ["bundle \(bundle.version): content does not match its version or has invalid file names"] }
        let managed = ManagedBundle(directory: config.coordinatorDirectory)
        if managed.currentVersion == bundle.version { return nil }
        let previous: String?
        do {
            previous = try managed.install(bundle)
        } catch {
            return ["cannot write bundle \(bundle.version) to \(config.coordinatorDirectory): \(error)"]
        }
        logger.info("applying coordinator bundle", metadata: ["version": "\(bundle.version)", "files": "\(bundle.files.map(\.name))"])
        if let failure = await reloadNow() {
            try? managed.switchTo(previous)
            managed.prune()
            return failure.messages
        }
        managed.prune()
        return nil
    }

    /// The bundle version running now.
    func appliedBundleVersion() -> String? {
        running.flatMap { ManagedBundle(directory: $0.coordinatorDirectory).currentVersion }
    }

    /// The heartbeat's numbers come from the agent's own metrics (what a scrape would see), for the pipelines running.
    func heartbeatMetrics() -> (exposition: [UInt8], running: [String]) {
        (metrics.render(), running?.pipelines.map(\.id) ?? [])
    }

    /// Starts, restarts (settings changed) or stops the coordinator connection to match the configuration.
    private func updateCoordinatorClient(_ config: AgentConfig) {
        guard config.coordinator != coordinatorSettings || (config.coordinator != nil && coordinatorClient == nil)
            || (config.coordinator != nil && config.metricsListen != announcedMetricsAddress)
        else { return }
        coordinatorClient?.cancel()
        coordinatorClient = nil
        coordinatorSettings = config.coordinator
        announcedMetricsAddress = config.metricsListen
        CoordinatorClient.reset(metrics, configured: config.coordinator != nil)
        guard let settings = config.coordinator else { return }
        let client = CoordinatorClient(
            settings: settings, agentID: config.agentID, stateDirectory: config.coordinatorDirectory, agent: self, metrics: metrics,
            metricsAddress: config.metricsListen?.description, logger: logger)
        coordinatorClient = Task { await client.run() }
    }

    /// Binds the metrics endpoint when its address changed; the old one closes only once the new one is up.
    private func applyMetricsListen(_ address: BindAddress?, closePrevious: Bool = true) async throws {
        guard address != metricsAddress || (address != nil && metricsChannel == nil) else { return }
        let previous = metricsChannel
        if let address {
            metricsChannel = try await metricsServer.bind(address)
        } else {
            metricsChannel = nil
        }
        metricsAddress = address
        if closePrevious { try? await previous?.close() }
        if let address { logger.info("metrics endpoint listening", metadata: ["address": "\(address)"]) }
    }

    private func recordReload(success: Bool) {
        (success ? metrics.reloadsSucceeded : metrics.reloadsFailed).increment()
        metrics.lastReloadSuccessful.set(to: success ? 1 : 0)
        metrics.lastReloadTimestamp.set(to: Date().timeIntervalSince1970)
    }
}
