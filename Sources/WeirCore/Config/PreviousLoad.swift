import NIOConcurrencyHelpers
import Yams

/// What the last configuration load composed and validated, so a reload redoes only what its input changed.
/// An agent with a thousand pipelines usually reloads for one of them, and composing the YAML and decoding
/// every stage were most of a reload's time. Only the latest load's results are kept.
///
/// - A file's document depends on its text alone (a file's name and its text give the same nodes and marks).
/// - A valid pipeline depends on its YAML alone when every stage's `contentFingerprint` is empty (the
///   contract of `StageConfig.contentFingerprint`); pipelines with a stage that read files or named lists are
///   validated anew. What spans pipelines (duplicate ids, overlapping listeners) is checked on every load,
///   and only valid pipelines are kept, so reuse cannot hide an error.
final class PreviousLoad: Sendable {
    /// Unchecked: composed Nodes and validated specs are immutable values, never changed after a load.
    fileprivate struct Results: @unchecked Sendable {
        var files: [String: ComposedFile] = [:]
        var pipelines: [PipelineKey: ValidatedPipeline] = [:]
    }

    fileprivate struct ComposedFile {
        let text: String
        let node: Node
    }

    fileprivate struct PipelineKey: Hashable {
        let file: String
        let id: String
    }

    fileprivate struct ValidatedPipeline {
        /// The pipeline's YAML (the value of its id).
        let node: Node
        let spec: PipelineSpec
    }

    private let latest = NIOLockedValueBox(Results())

    /// What one load reads from and adds to.
    final class Generation: @unchecked Sendable {
        fileprivate let previous: Results
        fileprivate var current = Results()
        /// Files whose document is the last load's own: their pipelines need no comparison.
        private var unchangedFiles: Set<String> = []

        fileprivate init(previous: Results) { self.previous = previous }

        func node(path: String, text: String) -> Node? {
            guard let entry = previous.files[path], entry.text == text else { return nil }
            current.files[path] = entry
            unchangedFiles.insert(path)
            return entry.node
        }

        func add(path: String, text: String, node: Node) { current.files[path] = ComposedFile(text: text, node: node) }

        /// The last load's validation of pipeline `id` of `value.file`, when its YAML is the same (key order
        /// and styles included: anything else is simply validated again), placed where `value` now stands.
        func pipeline(id: String, location: SourceLocation?, _ value: ConfigValue) -> PipelineSpec? {
            let key = PipelineKey(file: value.file, id: id)
            guard let entry = previous.pipelines[key] else { return nil }
            let unchanged = unchangedFiles.contains(value.file)
            guard unchanged || Self.identical(entry.node, value.node) else { return nil }
            current.pipelines[key] = entry
            if unchanged { return entry.spec }
            // Lines above it may have changed: the positions are this file's.
            let items = Self.stageNodes(value.node)
            let stages = entry.spec.stages.map { stage in
                StageSpec(
                    index: stage.index, type: stage.type,
                    location: items[stage.index].mark.map { SourceLocation(file: value.file, line: $0.line, column: $0.column) },
                    fingerprint: stage.fingerprint, config: stage.config)
            }
            return PipelineSpec(id: id, location: location, stages: stages)
        }

        /// Keeps a pipeline that validated, when nothing but its YAML went into it.
        func add(_ spec: PipelineSpec, _ value: ConfigValue) {
            guard spec.stages.allSatisfy({ $0.config.contentFingerprint.isEmpty }) else { return }
            current.pipelines[PipelineKey(file: value.file, id: spec.id)] = ValidatedPipeline(node: value.node, spec: spec)
        }

        /// The items of a valid pipeline's `stages:`.
        private static func stageNodes(_ pipeline: Node) -> [Node] {
            guard case .mapping(let map) = pipeline else { return [] }
            for (key, value) in map where key.string == "stages" {
                if case .sequence(let items) = value { return Array(items) }
            }
            return []
        }

        /// Same scalars, tags and structure in the same order. Yams' own `==` would do, but it compares
        /// resolved tags, which costs a resolver call per scalar.
        static func identical(_ a: Node, _ b: Node) -> Bool {
            switch a {
            case .scalar(let x):
                guard case .scalar(let y) = b else { return false }
                return x.string == y.string && x.style == y.style && x.tag.rawValue == y.tag.rawValue
            case .sequence(let x):
                guard case .sequence(let y) = b, x.count == y.count, x.tag.rawValue == y.tag.rawValue else { return false }
                for index in x.indices where !identical(x[index], y[index]) { return false }
                return true
            case .mapping(let x):
                guard case .mapping(let y) = b, x.count == y.count, x.tag.rawValue == y.tag.rawValue else { return false }
                for index in x.indices {
                    let (p, q) = (x[index], y[index])
                    if !identical(p.key, q.key) || !identical(p.value, q.value) { return false }
                }
                return true
            case .alias:
                // Aliases are resolved while composing; one left here is compared by what it names.
                return a == b
            }
        }
    }

    func generation() -> Generation { Generation(previous: latest.withLockedValue { $0 }) }

    /// The files and pipelines `generation` read or added become the ones kept.
    func keep(_ generation: Generation) { latest.withLockedValue { $0 = generation.current } }
}
