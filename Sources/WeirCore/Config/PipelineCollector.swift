/// Reads `pipelines:` maps from any number of files and checks each pipeline's stages and shape.
struct PipelineCollector {
    let registry: StageRegistry
    let sink: DiagnosticSink
    /// The last load's valid pipelines, reused where a pipeline's YAML is unchanged.
    let previous: PreviousLoad.Generation?
    private var pipelines: [String: PipelineSpec] = [:]
    /// Where each id was first defined, valid or not, so a duplicate is reported even when the first has errors.
    private var seen: [String: SourceLocation?] = [:]
    /// Listener addresses already taken, in the order they were read, for the one-port-one-pipeline check.
    /// Listeners seen so far, by port: only binds on one port can overlap, so checking a pipeline costs what
    /// that port holds, not every pipeline before it (a reload of 1,500 pipelines checks each once).
    private var listeners: [Int: [(pipeline: String, transport: Transport, address: BindAddress)]] = [:]
    /// Exclusive claims made so far (`StageConfig.exclusiveClaims`), with who made them.
    private var claims: [String: (pipeline: String, stage: Int, location: SourceLocation?)] = [:]

    init(registry: StageRegistry, sink: DiagnosticSink, previous: PreviousLoad.Generation? = nil) {
        self.registry = registry
        self.sink = sink
        self.previous = previous
    }

    mutating func read(_ section: ConfigValue) {
        guard let map = section.mapping else { return }
        for (id, keyLocation, value) in map.allEntries() {
            if let first = seen[id] {
                let previous = first.map { " (first defined at \($0))" } ?? ""
                sink.report(ConfigDiagnostic(location: keyLocation, path: value.path, message: "duplicate pipeline id \"\(id)\"\(previous)"))
                continue
            }
            seen[id] = keyLocation
            if !ConfigLoader.isValidName(id) {
                sink.report(ConfigDiagnostic(
                    location: keyLocation, path: value.path,
                    message: "pipeline id must be 1-64 letters, digits, '-' or '_'"))
            }
            if let reused = previous?.pipeline(id: id, location: keyLocation, value) {
                // Valid on its own last time; what spans pipelines is checked again.
                let conflict = checkAcrossPipelines(pipeline: id, stages: reused.stages) { index in
                    value.mapping?.optional("stages")?.sequence?[index] ?? value
                }
                if !conflict { pipelines[id] = reused }
                continue
            }
            if let pipeline = readPipeline(id: id, location: keyLocation, value) {
                pipelines[id] = pipeline
                previous?.add(pipeline, value)
            }
        }
    }

    /// The valid pipelines, their references to other pipelines resolved. `strict`: a reference to a pipeline
    /// that is not here is an error (the agent's whole configuration); otherwise it is left unresolved (one
    /// document checked on its own, whose references may point at another document).
    func validated(strict: Bool = true) -> [PipelineSpec] {
        pipelines.values.sorted { $0.id < $1.id }.compactMap { pipeline in resolvingReferences(pipeline, strict: strict) }
    }

    /// The pipeline with every referring stage given what it refers to; nil after reporting a reference
    /// that leads nowhere.
    private func resolvingReferences(_ pipeline: PipelineSpec, strict: Bool) -> PipelineSpec? {
        guard pipeline.stages.contains(where: { $0.config is any ReferencesPipelines }) else { return pipeline }
        var stages: [StageSpec] = []
        var failed = false
        for stage in pipeline.stages {
            guard let referring = stage.config as? any ReferencesPipelines else {
                stages.append(stage)
                continue
            }
            let path = ConfigPath(scope: ["pipelines", pipeline.id, "stages", "[\(stage.index)]"], stageType: stage.type)
            var targets: [PipelineReference: any StageConfig] = [:]
            for reference in referring.references {
                let target = pipelines[reference.pipeline]?.stages.first { $0.type == reference.stageType }
                if let target {
                    targets[reference] = target.config
                } else if strict || pipelines[reference.pipeline] != nil {
                    let what = pipelines[reference.pipeline] == nil
                        ? "there is no pipeline \"\(reference.pipeline)\"" : "pipeline \"\(reference.pipeline)\" has no \(reference.stageType) stage"
                    sink.report(ConfigDiagnostic(
                        location: stage.location, path: path.appending(reference.option),
                        message: "\(what) (it must name a pipeline of this agent with a \(reference.stageType) stage)"))
                    failed = true
                }
            }
            guard !failed, targets.count == referring.references.count else {
                stages.append(stage)
                continue
            }
            let (config, taken, error) = referring.resolvingReferences(targets)
            if let error {
                sink.report(ConfigDiagnostic(location: stage.location, path: path, message: error))
                failed = true
                continue
            }
            stages.append(StageSpec(index: stage.index, type: stage.type, location: stage.location, fingerprint: stage.fingerprint + "#refs:" + taken, config: config))
        }
        return failed ? nil : PipelineSpec(id: pipeline.id, location: pipeline.location, stages: stages)
    }

    private mutating func readPipeline(id: String, location: SourceLocation?, _ value: ConfigValue) -> PipelineSpec? {
        guard let map = value.mapping else { return nil }
        let errorsBefore = sink.diagnostics.count
        let stagesValue = map.required("stages")
        map.finish()
        guard let items = stagesValue?.sequence else { return nil }
        if items.isEmpty { stagesValue?.error("a pipeline needs at least one stage") }

        var stages: [StageSpec] = []
        for (index, item) in items.enumerated() {
            if let stage = readStage(index: index, item) { stages.append(stage) }
        }
        guard sink.diagnostics.count == errorsBefore, let stagesValue else { return nil }
        checkShape(stages, items: items, stagesValue: stagesValue)
        checkAcrossPipelines(pipeline: id, stages: stages) { items[$0] }
        guard sink.diagnostics.count == errorsBefore else { return nil }
        return PipelineSpec(id: id, location: location, stages: stages)
    }

    private func readStage(index: Int, _ item: ConfigValue) -> StageSpec? {
        guard let map = item.mapping else { return nil }
        guard let typeValue = map.required("type"), let type = typeValue.string else { return nil }
        guard let configType = registry[type] else {
            typeValue.error("unknown stage type \"\(type)\" (known: \(registry.all.map { $0.type }.joined(separator: ", ")))")
            return nil
        }
        let stageValue = ConfigValue(node: item.node, file: item.file, path: item.path.enteringStage(type: type), sink: sink)
        guard let options = stageValue.mapping else { return nil }
        _ = options.optional("type")
        let decoded = configType.decode(options)
        options.finish()
        guard let decoded else { return nil }
        let content = decoded.contentFingerprint
        let fingerprint = item.node.fingerprint + (content.isEmpty ? "" : "#" + content)
        return StageSpec(index: index, type: type, location: item.location, fingerprint: fingerprint, config: decoded)
    }

    /// A forward pipeline is one listener first, one connector last, filters in between, all of one transport.
    /// Service stages may stand anywhere, including alone.
    private func checkShape(_ stages: [StageSpec], items: [ConfigValue], stagesValue: ConfigValue) {
        func error(at index: Int, _ message: String) {
            let item = items[index]
            let at = ConfigValue(node: item.node, file: item.file, path: item.path.enteringStage(type: stages[index].type), sink: sink)
            at.error(message)
        }
        var listener: (index: Int, transport: Transport)?
        var connector: (index: Int, transport: Transport)?
        // Service stages work beside the data path, so "first" and "last" count only the others.
        let dataPath = stages.filter { $0.role != .service }
        for stage in stages {
            switch stage.role {
            case .listener(let transport):
                if listener != nil { error(at: stage.index, "a pipeline has at most one listener") }
                else if stage.index != dataPath.first?.index { error(at: stage.index, "the listener must be the first stage") }
                listener = (stage.index, transport)
            case .connector(let transport):
                if connector != nil { error(at: stage.index, "a pipeline has at most one connector") }
                else if stage.index != dataPath.last?.index { error(at: stage.index, "the connector must be the last stage") }
                connector = (stage.index, transport)
            case .filter:
                break
            case .service:
                if let first = stages.first(where: { $0.type == stage.type }), first.index != stage.index {
                    error(at: stage.index, "a pipeline has at most one \(stage.type) stage (the first is stages[\(first.index)])")
                }
            }
        }
        if let listener, connector == nil {
            error(at: listener.index, "a pipeline with a listener needs a connect.* stage as its last stage")
        }
        if let connector, listener == nil {
            error(at: connector.index, "a pipeline with a connector needs a listen.* stage as its first stage")
        }
        if let listener, let connector, listener.transport != connector.transport {
            error(at: connector.index, "\(stages[connector.index].type) cannot carry traffic from \(stages[listener.index].type)")
        }
        let listenerConfig = listener.flatMap { stages[$0.index].config as? any ListenerConfig }
        let configs = stages.map(\.config)
        for stage in stages {
            if let message = stage.config.placementError(listener: listenerConfig) { error(at: stage.index, message) }
            if let message = stage.config.pipelineError(stages: configs) { error(at: stage.index, message) }
        }
        if !stages.contains(where: { $0.config.namesDestination }) {
            for stage in stages where stage.config.needsDestination {
                error(at: stage.index, "needs a destination for each connection, and no stage of this pipeline names one (give it fixed targets, or use a listener such as listen.socks5 or a transform that carries destinations)")
            }
        }
        for stage in stages {
            guard case .filter(let transports) = stage.role else { continue }
            guard let listener else {
                error(at: stage.index, "\(stage.type) acts on forwarded traffic and needs a listen.* stage first")
                continue
            }
            if !transports.contains(listener.transport) {
                error(at: stage.index, "\(stage.type) cannot act on traffic from \(stages[listener.index].type)")
            }
        }
    }

    /// Reports (at the stage's item, `item(index)`) a listener that overlaps one read before and a claim
    /// another pipeline made; true if there was either. Runs for reused pipelines too: what spans
    /// pipelines can change while a pipeline's own YAML does not.
    @discardableResult
    private mutating func checkAcrossPipelines(pipeline: String, stages: [StageSpec], item: (Int) -> ConfigValue) -> Bool {
        func error(_ stage: StageSpec, _ message: String) {
            let item = item(stage.index)
            ConfigValue(node: item.node, file: item.file, path: item.path.enteringStage(type: stage.type), sink: sink).error(message)
        }
        var conflict = false
        let listenerStage = stages.first { $0.config is any ListenerConfig }
        let listener = listenerStage?.config as? any ListenerConfig
        // The listener's socket and those of stages beside the data path (a DNS server's).
        var bindings: [(stage: StageSpec, transport: Transport, address: BindAddress)] = []
        if let stage = listenerStage, let listener, case .listener(let transport) = stage.role {
            bindings.append((stage, transport, listener.bindAddress))
        }
        for stage in stages { bindings += stage.config.socketBindings.map { (stage, $0.transport, $0.address) } }
        var bound: [(pipeline: String, transport: Transport, address: BindAddress)] = []
        var refused: Set<Int> = []
        for (stage, transport, address) in bindings {
            let held = (listeners[address.port] ?? []) + bound
            if let taken = held.first(where: { $0.transport == transport && Self.overlaps($0.address, address) }) {
                // Once per stage (a DNS server's UDP and TCP sockets collide together).
                if refused.insert(stage.index).inserted {
                    error(stage, "address \(address) overlaps \(taken.address) of pipeline \"\(taken.pipeline)\"")
                }
                conflict = true
            } else {
                bound.append((pipeline, transport, address))
            }
        }
        for binding in bound { listeners[binding.address.port, default: []].append(binding) }
        var made: [(String, (pipeline: String, stage: Int, location: SourceLocation?))] = []
        for stage in stages {
            for claim in stage.config.exclusiveClaims(listener: listener) {
                if let first = claims[claim.key] {
                    let place = first.location.map { " at \($0)" } ?? ""
                    error(stage, "\(claim.description) is already taken by pipeline \"\(first.pipeline)\" (stages[\(first.stage)]\(place)): \(claim.reason)")
                    conflict = true
                } else {
                    made.append((claim.key, (pipeline, stage.index, stage.location)))
                }
            }
        }
        // A pipeline that is refused holds nothing, so the next one is judged against what will run.
        if !conflict { for (key, holder) in made { claims[key] = holder } }
        return conflict
    }

    /// Two binds collide on the same port when the hosts are equal, either is `::` (dual-stack), or one is
    /// `0.0.0.0` and the other IPv4.
    static func overlaps(_ a: BindAddress, _ b: BindAddress) -> Bool {
        guard a.port == b.port, a.port != 0 else { return false }
        if a.host == b.host || a.host == "::" || b.host == "::" { return true }
        let isIPv4 = { (host: String) in !host.contains(":") }
        return (a.host == "0.0.0.0" && isIPv4(b.host)) || (b.host == "0.0.0.0" && isIPv4(a.host))
    }
}
