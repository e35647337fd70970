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
    /// Where `/metrics` and `/healthz` are served; nil turns the endpoint off.
    public var metricsListen: BindAddress?
    public var logLevel: Logger.Level
    public var logFormat: LogFormat
    /// Sorted by id.
    public var pipelines: [PipelineSpec]
    /// The main file and every included file, in load order.
    public var files: [String]

    public static let defaultPath = "/etc/weir/weir.yaml"
    public static let defaultBPFPinDirectory = "/sys/fs/bpf/weir"
    public static let defaultMetricsListen = "127.0.0.1:9477"
    public static let defaultInclude = ["pipelines.d/*.yaml"]

    /// The settings stages may read.
    public var stageEnvironment: StageEnvironment {
        StageEnvironment(stateDirectory: stateDirectory, bpfPinDirectory: bpfPinDirectory)
    }

    public func pipeline(_ id: String) -> PipelineSpec? { pipelines.first { $0.id == id } }
}
