import Logging
import NIOConcurrencyHelpers
import NIOCore
import WeirCore

/// One running pipeline: its built stages and, for a forward pipeline, its listener socket and forwarder.
///
/// `init` only builds (nothing is acquired); `start` binds or adopts a socket; `stop` releases it.
final class PipelineRuntime: Sendable {
    let spec: PipelineSpec
    let metrics: PipelineMetrics
    private let owner: ListenerOwner?
    private let listenerStage: (any Stage)?
    private let logger: Logger

    init(spec: PipelineSpec, metrics: PipelineMetrics, logger: Logger) {
        self.spec = spec
        self.metrics = metrics
        self.logger = logger
        let stages = spec.stages.map { $0.config.makeStage(StageContext(pipeline: spec.id, stageIndex: $0.index, metrics: metrics)) }
        listenerStage = spec.listener.map { stages[$0.index] }
        owner = Self.makeOwner(spec: spec, stages: stages, metrics: metrics, logger: logger)
    }

    private static func makeOwner(spec: PipelineSpec, stages: [any Stage], metrics: PipelineMetrics, logger: Logger) -> ListenerOwner? {
        guard let listener = spec.listener, case .listener(let transport) = listener.role,
            let connectorSpec = spec.stages.last
        else { return nil }
        let middle = stages.dropFirst().dropLast()
        switch transport {
        case .stream:
            guard let connector = stages.last as? any StreamConnector else { return nil }
            return .stream(StreamForwarder(
                pipeline: spec.id, filters: middle.compactMap { $0 as? any StreamFilter }, connector: connector,
                connectorType: connectorSpec.type, metrics: metrics, logger: logger))
        case .datagram:
            guard let connector = stages.last as? any DatagramConnector else { return nil }
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
    func start(reusing reusable: ListenerSocket?, group: any EventLoopGroup) async throws -> ListenerOwner? {
        guard let owner, let listener = spec.listener, let listenerStage else { return nil }
        if let reusable {
            boundSocket.withLockedValue { $0 = reusable }
            return reusable.setOwner(owner)
        }
        let socket = ListenerSocket(fingerprint: listener.fingerprint)
        socket.setOwner(owner)
        switch listenerStage {
        case let stream as any StreamListener: try await socket.bind(stream: stream, group: group)
        case let datagram as any DatagramListener: try await socket.bind(datagram: datagram, group: group)
        default: return nil
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

    /// Stops accepting, then waits up to `grace` for open connections before closing them.
    func stop(grace: Duration) async {
        await closeListener()
        await tracker?.drain(grace: grace)
    }
}
