/// One validated stage of a pipeline.
public struct StageSpec: Sendable {
    public let index: Int
    public let type: String
    public let location: SourceLocation?
    /// Canonical text of the stage's YAML; equal fingerprints mean equal behaviour.
    public let fingerprint: String
    public let config: any StageConfig

    public var role: StageRole { Swift.type(of: config).role }
}

/// One validated pipeline: an id and its ordered stages.
public struct PipelineSpec: Sendable {
    public let id: String
    public let location: SourceLocation?
    public let stages: [StageSpec]

    /// Canonical text of the whole pipeline; the reload diff compares these.
    public var fingerprint: String { stages.map(\.fingerprint).joined(separator: "|") }

    /// The stages that carry traffic, in order: listener, filters, connector (service stages left out).
    public var dataPath: [StageSpec] { stages.filter { $0.role != .service } }

    /// The listener, when this is a forward pipeline.
    public var listener: StageSpec? {
        stages.first { if case .listener = $0.role { return true } else { return false } }
    }
}
