import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals
import WeirCore

/// The agent process: loads the configuration, runs the pipelines and the metrics endpoint, reloads on
/// SIGHUP, and on graceful shutdown (SIGTERM/SIGINT) stops accepting and drains.
public actor Agent: Service {
    /// Startup failures, mapped to exit codes by the CLI.
    public enum StartError: Error, CustomStringConvertible {
        case invalidConfig(ConfigErrors)
        case startFailed(any Error)

        public var description: String {
            switch self {
            case .invalidConfig(let errors): return "invalid configuration:\n\(errors)"
            case .startFailed(let error): return "\(error)"
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
        let config: AgentConfig
        do {
            config = try loader.load(path: configPath)
        } catch {
            throw StartError.invalidConfig(error)
        }
        WeirLogHandler.settings.update(level: config.logLevel, format: config.logFormat)
        do {
            // Pipelines first: once /healthz answers, every pipeline is serving.
            try await supervisor.apply(config)
            try await applyMetricsListen(config.metricsListen)
        } catch {
            await supervisor.shutdown()
            throw StartError.startFailed(error)
        }
        recordReload(success: true)
        logger.info("agent started", metadata: ["id": "\(config.agentID)", "pipelines": "\(config.pipelines.count)", "config": "\(configPath)"])

        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            await reload()
        }

        logger.info("shutting down: draining connections", metadata: ["grace": "\(config.shutdownGrace)"])
        await supervisor.shutdown()
        try? await metricsChannel?.close()
        logger.info("stopped")
    }

    /// Validate, diff, apply; on any failure the running configuration stays as it was.
    func reload() async {
        logger.info("reloading configuration", metadata: ["config": "\(configPath)"])
        let config: AgentConfig
        do {
            config = try loader.load(path: configPath)
        } catch {
            logger.error("reload rejected: invalid configuration; keeping the running one\n\(error)")
            recordReload(success: false)
            return
        }
        let previousMetrics = metricsChannel
        let previousAddress = metricsAddress
        do {
            try await applyMetricsListen(config.metricsListen, closePrevious: false)
            try await supervisor.apply(config)
        } catch {
            if metricsChannel !== previousMetrics {
                try? await metricsChannel?.close()
                (metricsChannel, metricsAddress) = (previousMetrics, previousAddress)
            }
            logger.error("reload failed, rolled back; keeping the running configuration", metadata: ["error": "\(error)"])
            recordReload(success: false)
            return
        }
        if metricsChannel !== previousMetrics { try? await previousMetrics?.close() }
        WeirLogHandler.settings.update(level: config.logLevel, format: config.logFormat)
        recordReload(success: true)
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
