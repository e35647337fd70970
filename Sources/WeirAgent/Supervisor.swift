import Logging
import NIOCore
import WeirCore

/// A service stage refused to leave the configuration.
public struct RetirementRefused: Error, CustomStringConvertible {
    public let description: String
}

/// Why a configuration could not be applied; the running configuration is unchanged.
public struct ApplyError: Error, CustomStringConvertible {
    public let pipeline: String
    public let underlying: any Error
    public var description: String { "pipeline \"\(pipeline)\" failed to start: \(underlying)" }
}

/// Runs pipelines and moves them from one configuration to the next.
///
/// `apply` reads like Vector's topology reload: diff by pipeline id, start what is new or changed (binding
/// new sockets while the old ones still serve, or adopting the old socket when the listener is unchanged),
/// and only when every start succeeded, retire what was replaced. A failed start undoes the starts before it,
/// so the previous configuration stays in effect.
public actor Supervisor {
    private let group: any EventLoopGroup
    private let metrics: WeirMetrics
    private let logger: Logger
    private var running: [String: PipelineRuntime] = [:]
    private var shutdownGrace: Duration = .seconds(10)
    /// Retirements still draining, so shutdown can wait for them.
    private var retiring: [Int: Task<Void, Never>] = [:]
    private var nextRetirement = 0
    /// `agent.max_connections`, shared by every listener.
    private let agentBudget = ConnectionBudget(limit: nil)

    /// Stage types that may sweep shared kernel state after an apply.
    private let stageTypes: [any StageConfig.Type]
    /// The pipelines each stage type last swept for. A type is swept again only when they change (a
    /// pipeline with such a stage added or removed) or after a failed apply: the first sweep removed what a
    /// previous run left, and a stage that retires removes its own state, so a reload that touches no kernel
    /// stage costs no kernel round trips.
    private var sweptFor: [String: Set<String>] = [:]

    public init(group: any EventLoopGroup, metrics: WeirMetrics, logger: Logger, stageTypes: [any StageConfig.Type] = []) {
        self.stageTypes = stageTypes
        self.group = group
        self.metrics = metrics
        self.logger = logger
    }

    @discardableResult
    public func apply(_ config: AgentConfig) async throws(ApplyError) -> ReloadPlan {
        let old = running.values.map(\.spec)
        let plan = ReloadPlan(old: old, new: config.pipelines)
        try refuseProtectedRemovals(plan, config)

        // Sockets of pipelines that go away or change, by listen address.
        var outgoing: [String: PipelineRuntime] = [:]
        for id in plan.toRemove + plan.toChange {
            if let runtime = running[id], let key = runtime.listenerKey, runtime.ownsSocket { outgoing[key] = runtime }
        }

        var started: [Start] = []
        for id in plan.toChange + plan.toAdd {
            guard let spec = config.pipeline(id) else { continue }
            let runtime = PipelineRuntime(
                spec: spec, metrics: metrics.pipeline(id), environment: config.stageEnvironment, logger: logger)
            var start = Start(id: id, runtime: runtime)
            do {
                if let key = runtime.listenerKey, let predecessor = outgoing.removeValue(forKey: key),
                    let socket = predecessor.socket
                {
                    if socket.fingerprint == runtime.listenerFingerprint {
                        start.adopted = (socket, try await runtime.start(reusing: socket, group: group))
                    } else {
                        // Same address, other listener options: the old socket must go before the new bind.
                        await predecessor.closeListener()
                        start.reopen = predecessor
                        _ = try await runtime.start(reusing: nil, group: group, agentBudget: agentBudget)
                    }
                } else {
                    _ = try await runtime.start(reusing: nil, group: group, agentBudget: agentBudget)
                }
                try await startServices(&start, predecessor: running[id])
                started.append(start)
            } catch {
                started.append(start)
                await rollBack(started)
                // Kernel state the failed apply created for pipelines that do not run (an added pipeline's
                // rules or classes) goes; what the running ones use was re-applied by their restart.
                await sweep(config.stageEnvironment, always: true)
                throw ApplyError(pipeline: id, underlying: error)
            }
        }

        shutdownGrace = config.shutdownGrace
        agentBudget.setLimit(config.maxConnections)
        for id in plan.toRemove {
            if let runtime = running.removeValue(forKey: id) { retire(runtime, removed: true) }
        }
        for start in started {
            if let predecessor = running[start.id] { retire(predecessor, removed: false) }
            running[start.id] = start.runtime
        }
        metrics.certificates.set(running: running.values.map(\.spec))
        await sweep(config.stageEnvironment)
        if !plan.isEmpty {
            logger.info(
                "configuration applied",
                metadata: ["added": "\(plan.toAdd)", "changed": "\(plan.toChange)", "removed": "\(plan.toRemove)", "unchanged": "\(plan.unchanged.count)"])
        }
        return plan
    }

    /// Service stages that would leave the configuration (their pipeline removed, or changed to have no
    /// stage of that type) may refuse: the whole apply fails before anything changes.
    private func refuseProtectedRemovals(_ plan: ReloadPlan, _ config: AgentConfig) throws(ApplyError) {
        for id in plan.toRemove + plan.toChange {
            guard let runtime = running[id] else { continue }
            let remainingTypes = Set(config.pipeline(id)?.stages.map(\.type) ?? [])
            for slot in runtime.services where !remainingTypes.contains(slot.type) {
                if let refusal = slot.stage.retirementRefusal() {
                    throw ApplyError(pipeline: id, underlying: RetirementRefused(description: "\(slot.type): \(refusal)"))
                }
            }
        }
    }

    /// Lets each stage type remove shared kernel state that no running stage owns.
    private func sweep(_ environment: StageEnvironment, always: Bool = false) async {
        var owners: [String: Set<String>] = [:]
        for runtime in running.values {
            for stage in runtime.spec.stages { owners[stage.type, default: []].insert(runtime.spec.id) }
        }
        for type in stageTypes {
            let keeping = owners[type.type] ?? []
            guard always || sweptFor[type.type] != keeping else { continue }
            let problems = await type.sweep(keeping: keeping, environment: environment)
            for problem in problems { logger.error("\(problem)") }
            metrics.health.set("\(type.type) state", problems.isEmpty ? nil : problems.joined(separator: "; "))
            sweptFor[type.type] = keeping
        }
    }

    /// Problems each service stage reported at its last reconcile, by health source.
    private var stageProblems: [String: [String]] = [:]

    /// Lets every running service stage compare its kernel state with what it installed and repair it (see
    /// `ServiceStage.reconcile`); records what they report in `/healthz`, `weir_stage_healthy` and the log.
    /// The caller runs it one at a time with applies.
    public func reconcile() async {
        var current: [String: [String]] = [:]
        for runtime in running.values.sorted(by: { $0.spec.id < $1.spec.id }) {
            let pipeline = runtime.spec.id
            for slot in runtime.services {
                let report = await slot.stage.reconcile()
                let source = "pipeline \(pipeline) \(slot.type) (stage \(slot.index))"
                current[source] = report.problems
                let metadata: Logger.Metadata = ["pipeline": "\(pipeline)", "stage": "\(slot.type)"]
                for repair in report.repaired {
                    logger.info("\(repair)", metadata: metadata)
                    runtime.metrics.counter(
                        "weir_stage_repairs_total", labels: [("stage", slot.type)],
                        help: "Times a service stage put back kernel state that had gone (an interface deleted and created again)."
                    ).increment()
                }
                let previous = stageProblems[source] ?? []
                if report.problems != previous {
                    for problem in report.problems where !previous.contains(problem) { logger.error("\(problem)", metadata: metadata) }
                    if report.problems.isEmpty { logger.info("stage is in force again", metadata: metadata) }
                }
                runtime.metrics.gauge(
                    "weir_stage_healthy", labels: [("stage", slot.type)],
                    help: "1 while a service stage is fully in force, 0 while it reports a problem (e.g. a missing interface)."
                ).set(to: report.problems.isEmpty ? 1 : 0)
                metrics.health.set(source, report.problems.isEmpty ? nil : report.problems.joined(separator: "; "))
            }
        }
        // Stages that left with their pipelines take their problems along.
        for source in stageProblems.keys where current[source] == nil { metrics.health.set(source, nil) }
        stageProblems = current
    }

    /// The shortest `reconcileInterval` a running service stage asks for, at most `longest`.
    public func reconcileInterval(atMost longest: Duration) -> Duration {
        running.values.flatMap(\.services).compactMap(\.stage.reconcileInterval).reduce(longest) { min($0, $1) }
    }

    /// Stops accepting everywhere, waits up to the configured grace for open connections, closes the rest.
    /// Service stages stop but keep their persistent state (pinned maps) for the next start.
    public func shutdown() async {
        let runtimes = Array(running.values)
        running = [:]
        metrics.certificates.set(running: [])
        for source in stageProblems.keys { metrics.health.set(source, nil) }
        stageProblems = [:]
        await withTaskGroup(of: Void.self) { group in
            for runtime in runtimes { group.addTask { await runtime.stop(grace: self.shutdownGrace, retireServices: false) } }
            for task in retiring.values { group.addTask { await task.value } }
        }
        retiring = [:]
    }

    private struct Start {
        let id: String
        let runtime: PipelineRuntime
        /// An adopted socket and the owner it had.
        var adopted: (socket: ListenerSocket, previousOwner: ListenerOwner?)?
        /// A predecessor whose socket was closed to make room; rollback reopens it.
        var reopen: PipelineRuntime?
        /// Service stages the new runtime carries on with from its predecessor (same key).
        var adoptedServices: [ServiceSlot] = []
        /// The predecessor's other service stages, stopped before the new ones started so the two never
        /// act at once (counting packets twice); the predecessor's retirement retires them, rollback restarts them.
        var stoppedServices: [ServiceSlot] = []
        /// The new runtime's service stages started so far.
        var startedServices: [ServiceSlot] = []
    }

    /// Hands unchanged service stages over from the predecessor, stops its others, starts the new ones.
    private func startServices(_ start: inout Start, predecessor: PipelineRuntime?) async throws {
        let keys = Set(start.runtime.services.map(\.key))
        if let predecessor {
            start.adoptedServices = predecessor.handOverServices(withKeys: keys)
            start.runtime.takeOverServices(start.adoptedServices)
            start.stoppedServices = predecessor.services
            for slot in start.stoppedServices { await slot.stage.stop() }
        }
        let adopted = Set(start.adoptedServices.map(\.key))
        for slot in start.runtime.services where !adopted.contains(slot.key) {
            try await slot.stage.start()
            start.startedServices.append(slot)
        }
    }

    /// Undoes the starts of a failed apply, newest first. Stages started here are stopped but not retired:
    /// their persistent state may be what the previous configuration, or the next attempt, uses.
    private func rollBack(_ started: [Start]) async {
        for start in started.reversed() {
            for slot in start.startedServices.reversed() { await slot.stage.stop() }
            if let predecessor = running[start.id] {
                predecessor.takeOverServices(start.adoptedServices)
                for slot in start.stoppedServices {
                    do {
                        try await slot.stage.start()
                    } catch {
                        logger.error("rollback could not restart a service stage", metadata: ["pipeline": "\(start.id)", "error": "\(error)"])
                    }
                }
            }
            if let (socket, previousOwner) = start.adopted {
                socket.setOwner(previousOwner)
            } else {
                await start.runtime.closeListener()
            }
            if let predecessor = start.reopen {
                do {
                    _ = try await predecessor.start(reusing: nil, group: group, agentBudget: agentBudget)
                } catch {
                    logger.error("rollback could not reopen listener", metadata: ["pipeline": "\(predecessor.spec.id)", "error": "\(error)"])
                }
            }
        }
    }

    /// Stops a replaced or removed pipeline in the background: it stops accepting now, its open
    /// connections get the shutdown grace to finish.
    private func retire(_ runtime: PipelineRuntime, removed: Bool) {
        let grace = shutdownGrace
        let number = nextRetirement
        nextRetirement += 1
        retiring[number] = Task {
            await runtime.stop(grace: grace, retireServices: true)
            self.retired(number, runtime: runtime, removed: removed)
        }
    }

    private func retired(_ number: Int, runtime: PipelineRuntime, removed: Bool) {
        retiring[number] = nil
        // A pipeline removed and added again while it drained keeps its series.
        if removed, running[runtime.spec.id] == nil { runtime.metrics.unregister() }
    }
}
