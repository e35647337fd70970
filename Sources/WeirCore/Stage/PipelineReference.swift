/// A stage's use of a stage in another pipeline of the same agent: `enforce.nftables` sending clients' DNS to
/// a `dns.filter` pipeline (`dns_hijack: {resolver: dns}`), or following what it answers (`domains_from`).
/// Validation checks that the pipeline exists and has a stage of the type; the referring stage then gets the
/// referred stage's configuration (`resolvingReferences`), and a change there reloads it.
public struct PipelineReference: Sendable, Hashable {
    public let pipeline: String
    public let stageType: String
    /// The option that refers, for the error: "dns_hijack.resolver".
    public let option: String

    public init(pipeline: String, stageType: String, option: String) {
        self.pipeline = pipeline
        self.stageType = stageType
        self.option = option
    }
}

/// A stage that refers to stages of other pipelines.
public protocol ReferencesPipelines: StageConfig {
    var references: [PipelineReference] { get }
    /// The configuration with what it refers to filled in (`targets` has a configuration for every
    /// reference), and the text of what it took from them — appended to the stage's fingerprint, so a
    /// change there that matters here restarts this stage. `error`: what does not fit (a group the DNS stage
    /// does not have), reported at the stage.
    func resolvingReferences(_ targets: [PipelineReference: any StageConfig]) -> (config: Self, fingerprint: String, error: String?)
}

/// A stage that serves DNS (`dns.filter`), for the stages that send clients to it.
public protocol ServesDNS: StageConfig {
    /// Where it answers, on UDP and TCP.
    var dnsListen: BindAddress { get }
    /// Its client groups' names, for stages that scope by group.
    var dnsGroupNames: [String] { get }
    /// The resolvers it asks (an egress allowlist in front of them must let its queries out).
    var dnsUpstreams: [HostPort] { get }
}
