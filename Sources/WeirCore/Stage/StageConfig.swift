/// The transport a data-path stage handles.
public enum Transport: String, Sendable, Hashable {
    case stream  // TCP
    case datagram  // UDP
}

/// Where a stage sits in a pipeline. Validation checks the order without building anything.
public enum StageRole: Sendable, Hashable {
    /// Accepts client traffic; first stage of a forward pipeline.
    case listener(Transport)
    /// Carries traffic on towards a target; last stage of a forward pipeline.
    case connector(Transport)
    /// Acts on each connection between listener and connector.
    case filter(Set<Transport>)
}

/// One documented option of a stage, printed by `weir stages TYPE`.
public struct OptionDoc: Sendable {
    public let name: String
    public let type: String
    public let defaultValue: String?
    public let summary: String

    public init(_ name: String, _ type: String, default defaultValue: String? = nil, _ summary: String) {
        self.name = name
        self.type = type
        self.defaultValue = defaultValue
        self.summary = summary
    }
}

/// A stage's validated options. Each stage type has one: it reads itself from YAML, reporting every problem,
/// and builds the runnable stage.
public protocol StageConfig: Sendable {
    /// `family.kind`, as written after `type:`.
    static var type: String { get }
    /// One line for `weir stages`.
    static var summary: String { get }
    static var role: StageRole { get }
    static var options: [OptionDoc] { get }
    /// A complete drop-in file that uses this stage; the conformance test validates it.
    static var sample: String { get }

    /// Reads the stage's own keys (`type` is already read). Returns nil after reporting diagnostics.
    static func decode(_ options: ConfigMapping) -> Self?

    /// Builds the runnable stage. Must not acquire anything (sockets, files, kernel objects): that happens
    /// when the pipeline runs, so validation and rollback never leave traces.
    func makeStage(_ context: StageContext) -> any Stage
}

/// A listener's configuration exposes its address so validation can catch two pipelines on one port.
public protocol ListenerConfig: StageConfig {
    var bindAddress: BindAddress { get }
}

/// What a stage may know about the pipeline it is built for.
public struct StageContext: Sendable {
    public let pipeline: String
    public let stageIndex: Int
    public let metrics: PipelineMetrics

    public init(pipeline: String, stageIndex: Int, metrics: PipelineMetrics) {
        self.pipeline = pipeline
        self.stageIndex = stageIndex
        self.metrics = metrics
    }
}
