import Glibc
import Logging
import NIOConcurrencyHelpers
import NIOCore
import WeirCore

/// A service stage and what identifies its behaviour: its own YAML and its listener's, which it may act on.
/// Equal keys across a reload mean the running instance can simply carry on.
struct ServiceSlot: Sendable {
    let key: String
    /// The stage type, e.g. `enforce.nftables`.
    let type: String
    /// The stage's position in its pipeline.
    let index: Int
    let stage: any ServiceStage
}

/// One running pipeline: its built stages and, for a forward pipeline, its listener socket and forwarder.
///
/// `init` only builds (nothing is acquired); `start` binds or adopts a socket, the supervisor starts or hands
/// over the service stages; `stop` releases both.
final class PipelineRuntime: Sendable {
    let spec: PipelineSpec
    let metrics: PipelineMetrics
    private let owner: ListenerOwner?
    private let listenerStage: (any Stage)?
    private let logger: Logger
    /// The service stages this runtime is responsible for; some may be handed to a successor on reload.
    private let serviceSlots: NIOLockedValueBox<[ServiceSlot]>

    init(spec: PipelineSpec, metrics: PipelineMetrics, environment: StageEnvironment, logger: Logger) {
        self.spec = spec
        self.metrics = metrics
        self.logger = logger
        let listenerConfig = spec.listener?.config as? any ListenerConfig
        let stages = spec.stages.map {
            $0.config.makeStage(StageContext(
                pipeline: spec.id, stageIndex: $0.index, metrics: metrics, listener: listenerConfig, environment: environment))
        }
        listenerStage = spec.listener.map { stages[$0.index] }
        owner = Self.makeOwner(spec: spec, stages: stages, metrics: metrics, logger: logger)
        serviceSlots = NIOLockedValueBox(spec.stages.compactMap { stageSpec in
            guard let service = stages[stageSpec.index] as? any ServiceStage else { return nil }
            return ServiceSlot(
                key: stageSpec.fingerprint + "|" + (spec.listener?.fingerprint ?? ""), type: stageSpec.type, index: stageSpec.index,
                stage: service)
        })
    }

    var services: [ServiceSlot] { serviceSlots.withLockedValue { $0 } }

    /// Removes and returns the services whose keys are in `keys`, for a successor to carry on with.
    func handOverServices(withKeys keys: Set<String>) -> [ServiceSlot] {
        serviceSlots.withLockedValue { slots in
            let handed = slots.filter { keys.contains($0.key) }
            slots.removeAll { keys.contains($0.key) }
            return handed
        }
    }

    /// Takes running services over (from a predecessor, or back on rollback), replacing the built ones.
    func takeOverServices(_ handed: [ServiceSlot]) {
        let keys = Set(handed.map(\.key))
        serviceSlots.withLockedValue { slots in
            slots.removeAll { keys.contains($0.key) }
            slots.append(contentsOf: handed)
        }
    }

    private static func makeOwner(spec: PipelineSpec, stages: [any Stage], metrics: PipelineMetrics, logger: Logger) -> ListenerOwner? {
        let dataPath = spec.dataPath
        guard let listener = spec.listener, case .listener(let transport) = listener.role,
            let connectorSpec = dataPath.last
        else { return nil }
        let middle = dataPath.dropFirst().dropLast().map { stages[$0.index] }
        let connector = stages[connectorSpec.index]
        let negotiating = stages[listener.index] as? any NegotiatingStreamListener
        switch transport {
        case .stream:
            guard let connector = connector as? any StreamConnector else { return nil }
            let options = (listener.config as? any ListenerConfig)?.connectionOptions ?? ConnectionOptions()
            return .stream(StreamForwarder(
                pipeline: spec.id, filters: middle.compactMap { $0 as? any StreamFilter }, connector: connector,
                connectorType: connectorSpec.type, negotiating: negotiating, listenerType: listener.type,
                idleTimeout: options.idleTimeout, metrics: metrics, logger: logger))
        case .datagram:
            guard let connector = connector as? any DatagramConnector else { return nil }
            return .datagram(DatagramForwarder(
                pipeline: spec.id, filters: middle.compactMap { $0 as? any DatagramFilter }, connector: connector,
                connectorType: connectorSpec.type, metrics: metrics, logger: logger))
        }
    }

    private let boundSocket = NIOLockedValueBox<ListenerSocket?>(nil)

    /// The socket this pipeline listens on, once started.
    var socket: ListenerSocket? { boundSocket.withLockedValue { $0 } }

    /// Where the listener binds, for handing sockets between pipelines on reload.
    var listenerKey: String? {
        guard let listener = spec.listener, let config = listener.config as? any ListenerConfig,
            case .listener(let transport) = listener.role
        else { return nil }
        return "\(transport.rawValue)/\(config.bindAddress)"
    }

    var listenerFingerprint: String? { spec.listener?.fingerprint }

    /// Binds a new socket, or adopts `reusable` (a socket of an identical listener from the running config).
    /// Returns the owner `reusable` had, so a rollback can hand it back.
    func start(reusing reusable: ListenerSocket?, group: any EventLoopGroup, agentBudget: ConnectionBudget? = nil) async throws -> ListenerOwner? {
        guard let owner, let listener = spec.listener, let listenerStage else { return nil }
        if let reusable {
            boundSocket.withLockedValue { $0 = reusable }
            return reusable.setOwner(owner)
        }
        let socket = ListenerSocket(
            fingerprint: listener.fingerprint, stage: listener.type,
            maxConnections: (listener.config as? any ListenerConfig)?.connectionOptions.maxConnections, agentBudget: agentBudget)
        socket.setOwner(owner)
        do {
            switch listenerStage {
            case let stream as any StreamListener: try await socket.bind(stream: stream, group: group)
            case let datagram as any DatagramListener: try await socket.bind(datagram: datagram, group: group)
            case let dialing as any DialingStreamListener: socket.start(dialing: dialing, group: group)
            default: return nil
            }
        } catch let error as IOError {
            // NIO names the system call; operators need the address.
            let address = (listener.config as? any ListenerConfig).map { "\($0.bindAddress) (\(listener.type))" } ?? listener.type
            throw ListenFailed(address: address, reason: String(cString: strerror(error.errnoCode)))
        }
        boundSocket.withLockedValue { $0 = socket }
        return nil
    }

    /// Open client connections (TCP) of this pipeline.
    var tracker: ConnectionTracker? {
        if case .stream(let forwarder) = owner { return forwarder.tracker }
        return nil
    }

    /// Whether this runtime still owns `socket` (it may have been handed to a successor).
    var ownsSocket: Bool {
        guard let socket, let owner, let current = socket.currentOwner else { return false }
        switch (owner, current) {
        case (.stream(let a), .stream(let b)): return a === b
        case (.datagram(let a), .datagram(let b)): return a === b
        default: return false
        }
    }

    /// Stops accepting: closes the socket unless a successor adopted it.
    func closeListener() async {
        if ownsSocket { await socket?.close() }
    }

    /// Stops accepting and stops the service stages (retiring them too when the pipeline or they left the
    /// configuration), then waits up to `grace` for open connections before closing them.
    func stop(grace: Duration, retireServices: Bool) async {
        await closeListener()
        for slot in services.reversed() {
            await slot.stage.stop()
            if retireServices { await slot.stage.retire() }
        }
        await tracker?.drain(grace: grace)
    }
}

/// A listener that could not bind, e.g. `cannot listen on 127.0.0.1:8080 (listen.tcp): Address already in use`.
struct ListenFailed: Error, CustomStringConvertible {
    let address: String
    let reason: String
    var description: String { "cannot listen on \(address): \(reason)" }
}
