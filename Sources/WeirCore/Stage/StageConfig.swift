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
    /// Works beside the data path (a `ServiceStage`): may stand anywhere, at most once per pipeline, and
    /// alone in a pipeline of its own.
    case service
}

/// One documented option of a stage, printed by `weir stages TYPE`.
public struct OptionDoc: Sendable {
    public let name: String
    public let type: String
    public let defaultValue: String?
    public let summary: String
    /// The value is a secret (a password, the passwords of a users map, auth headers): shown as `<redacted>`
    /// to API readers below operator.
    public let secret: Bool

    public init(_ name: String, _ type: String, default defaultValue: String? = nil, secret: Bool = false, _ summary: String) {
        self.name = name
        self.type = type
        self.defaultValue = defaultValue
        self.secret = secret
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

    /// Checks what depends on the rest of the pipeline; `listener` is the pipeline's listener, if any.
    /// Returns a message for the stage's location, or nil.
    func placementError(listener: (any ListenerConfig)?) -> String?

    /// For stage types whose kernel state is shared between pipelines (one nftables table, the routes of one
    /// protocol): called after the agent starts and after every reload that succeeded, with the pipelines whose
    /// stage of this type now runs. Whatever state of this type none of them owns — left by a crashed run, or by
    /// a stage removed while the agent was stopped — is removed. Returns problems for `/healthz`, kept until
    /// the next sweep: state left in force against the configuration, which the operator must resolve.
    static func sweep(keeping pipelines: Set<String>, environment: StageEnvironment) async -> [String]

    /// Whether the stage learns where each connection goes (a SOCKS5 listener, a decrypting transform whose
    /// stream starts with an address).
    var namesDestination: Bool { get }

    /// Whether the stage needs to know where each connection goes (a connector without targets of its own).
    /// Validation refuses it in a pipeline where no stage names destinations.
    var needsDestination: Bool { get }

    /// Why the stage cannot work with the pipeline's other stages (`stages` is the whole pipeline, itself
    /// included), or nil. For requirements beyond the listener's, e.g. a stage that needs another one.
    func pipelineError(stages: [any StageConfig]) -> String?

    /// A digest of what the stage read besides its YAML (certificate files, named lists), appended to its
    /// fingerprint so a reload picks up a changed file even when the YAML did not change. Empty for most
    /// stages, and it must be empty only when decoding depended on the stage's YAML alone: a reload reuses
    /// such a stage's decoded configuration while its YAML is unchanged (`PreviousLoad`).
    var contentFingerprint: String { get }

    /// The certificate files the stage loaded, for `weir_tls_certificate_expiry_timestamp_seconds` (and the
    /// alert on certificates about to expire). Empty for stages without TLS.
    var certificates: [LoadedCertificate] { get }

    /// What the stage holds alone among all of an agent's pipelines (an interface's shaping for one scope, an
    /// interface's egress allowlist). Validation refuses a second stage with a claim already made, naming
    /// where the first is, so `weir validate` catches what would fail at start or silently block traffic.
    /// `listener` is the pipeline's listener, if any.
    func exclusiveClaims(listener: (any ListenerConfig)?) -> [StageClaim]

    /// Sockets a stage beside the data path binds (dns.filter's UDP and TCP server), checked against every
    /// pipeline's listeners and each other like listeners are: sockets bound with SO_REUSEPORT on one
    /// address would share its clients silently instead of failing to bind.
    var socketBindings: [(transport: Transport, address: BindAddress)] { get }

    /// Builds the runnable stage. Must not acquire anything (sockets, files, kernel objects): that happens
    /// when the pipeline runs, so validation and rollback never leave traces.
    func makeStage(_ context: StageContext) -> any Stage
}

extension StageConfig {
    public func placementError(listener: (any ListenerConfig)?) -> String? { nil }
    public func pipelineError(stages: [any StageConfig]) -> String? { nil }
    public var namesDestination: Bool { false }
    public var needsDestination: Bool { false }
    public var contentFingerprint: String { "" }
    public var certificates: [LoadedCertificate] { [] }
    public func exclusiveClaims(listener: (any ListenerConfig)?) -> [StageClaim] { [] }
    public var socketBindings: [(transport: Transport, address: BindAddress)] { [] }
    public static func sweep(keeping pipelines: Set<String>, environment: StageEnvironment) async -> [String] { [] }
}

/// Something a stage holds alone; two stages with one `key` conflict.
public struct StageClaim: Sendable, Hashable {
    public let key: String
    /// What is claimed, for the error: "the egress allowlist of eth0".
    public let description: String
    /// Why two cannot share it.
    public let reason: String

    public init(key: String, description: String, reason: String) {
        self.key = key
        self.description = description
        self.reason = reason
    }
}

/// A listener's configuration exposes its address so validation can catch two pipelines on one port.
public protocol ListenerConfig: StageConfig {
    var bindAddress: BindAddress { get }
    /// `max_connections`, `idle_timeout` (stream listeners).
    var connectionOptions: ConnectionOptions { get }
    /// Whether its clients name their destination (SOCKS5, HTTP CONNECT), so a connector needs no targets.
    static var providesDestination: Bool { get }
}

extension ListenerConfig {
    public var connectionOptions: ConnectionOptions { ConnectionOptions() }
    public static var providesDestination: Bool { false }
    public var namesDestination: Bool { Self.providesDestination }
}

extension ListenerConfig {
    /// TCP or UDP.
    public var transport: Transport? {
        if case .listener(let transport) = Self.role { return transport }
        return nil
    }
}

/// Agent-wide settings a stage may need.
public struct StageEnvironment: Sendable, Equatable {
    /// `agent.state_dir`.
    public var stateDirectory: String
    /// `agent.bpf_pin_dir`: where eBPF stages pin their maps (on a bpf filesystem, mounted when missing).
    public var bpfPinDirectory: String

    public init(stateDirectory: String = "/var/lib/weir", bpfPinDirectory: String = "/sys/fs/bpf/weir") {
        self.stateDirectory = stateDirectory
        self.bpfPinDirectory = bpfPinDirectory
    }
}

/// What a stage may know about the pipeline it is built for.
public struct StageContext: Sendable {
    public let pipeline: String
    public let stageIndex: Int
    public let metrics: PipelineMetrics
    /// The pipeline's listener, for stages that act on its traffic from beside the data path.
    public let listener: (any ListenerConfig)?
    public let environment: StageEnvironment

    public init(
        pipeline: String, stageIndex: Int, metrics: PipelineMetrics, listener: (any ListenerConfig)? = nil,
        environment: StageEnvironment = StageEnvironment()
    ) {
        self.pipeline = pipeline
        self.stageIndex = stageIndex
        self.metrics = metrics
        self.listener = listener
        self.environment = environment
    }
}

/// A stage that multiplexes connections over a carrier (`transform.mux`), for stages that need one.
public protocol MultiplexingConfig: StageConfig {
    var multiplexingSide: MultiplexingSide { get }
}
