import Foundation
import Logging

/// The whole validated configuration: the main file plus every included drop-in.
public struct AgentConfig: Sendable {
    public enum LogFormat: String, Sendable, CaseIterable {
        case text, json
    }

    public var agentID: String
    public var stateDirectory: String
    /// Where eBPF stages pin their maps, on a bpf filesystem (mounted by the agent when missing).
    public var bpfPinDirectory: String = AgentConfig.defaultBPFPinDirectory
    /// How long SIGTERM waits for open connections to finish.
    public var shutdownGrace: Duration
    /// Open connections at most across every listener (`agent.max_connections`); nil: no limit.
    public var maxConnections: Int?
    /// Where `/metrics` and `/healthz` are served; nil turns the endpoint off.
    public var metricsListen: BindAddress?
    /// `metrics.destinations_top`: destinations with series of their own in `weir_destination_bytes_total`,
    /// per pipeline; the rest are `destination="other"`.
    public var destinationsTop = AgentConfig.defaultDestinationsTop
    public var logLevel: Logger.Level
    public var logFormat: LogFormat
    /// Where the agent gets remote configuration, if anywhere.
    public var coordinator: CoordinatorSettings?
    /// Sorted by id.
    public var pipelines: [PipelineSpec]
    /// The main file and every included file, in load order.
    public var files: [String]

    public static let defaultPath = "/etc/weir/weir.yaml"
    public static let defaultBPFPinDirectory = "/sys/fs/bpf/weir"
    public static let defaultMetricsListen = "127.0.0.1:9477"
    public static let defaultDestinationsTop = 100
    public static let defaultInclude = ["pipelines.d/*.yaml"]

    /// The settings stages may read.
    public var stageEnvironment: StageEnvironment {
        StageEnvironment(stateDirectory: stateDirectory, bpfPinDirectory: bpfPinDirectory)
    }

    public func pipeline(_ id: String) -> PipelineSpec? { pipelines.first { $0.id == id } }

    /// The coordinator's bundle is kept here: `bundle` links to `bundles/<version>`, whose files load like drop-ins.
    public var coordinatorDirectory: String { (stateDirectory as NSString).appendingPathComponent("coordinator") }
}

/// The `coordinator:` section of the main file.
public struct CoordinatorSettings: Sendable, Equatable {
    /// `wss://host:port`; the agent dials its WebSocket path.
    public var url: String
    /// An enrollment token, used once when the agent has no credential yet.
    public var tokenFile: String?
    /// The agent's own credential; default `state_dir/coordinator/credential`, written at enrollment.
    public var credentialFile: String?
    /// CA certificate(s) that signed the coordinator's certificate; default: the system's trust store.
    public var caFile: String?
    /// Labels the agent announces (assignments select agents by label).
    public var labels: [String: String]

    public init(url: String, tokenFile: String?, credentialFile: String?, caFile: String?, labels: [String: String]) {
        self.url = url
        self.tokenFile = tokenFile
        self.credentialFile = credentialFile
        self.caFile = caFile
        self.labels = labels
    }
}
