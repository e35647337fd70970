import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import WeirCore

/// `connect.reverse`: the public end of a reverse tunnel. Agents behind NAT (`listen.reverse`) dial in to
/// `listen`; this pipeline's clients are sent back through those connections, as streams of a multiplexed
/// carrier (`transform.mux side: client` earlier in the pipeline).
public struct ConnectReverseConfig: StageConfig {
    public static let type = "connect.reverse"
    public static let summary = "Send connections back through tunnels that agents behind NAT (listen.reverse) keep open to this agent."
    public static let role = StageRole.connector(.stream)
    public static let options = [
        OptionDoc("listen", "ip:port", "Address the inner agents dial in to (required). Authenticate them: put transform.tls with a ca after transform.mux."),
        OptionDoc("connect_timeout", "duration", default: "5s", "How long a connection waits for a tunnel when none is open."),
        OptionDoc(
            "max_idle_tunnels", "integer", default: "64",
            "Tunnels kept waiting for a carrier; past it the oldest is closed (its inner agent dials again). Bounds what anyone who can reach listen can make this agent hold."),
    ]
    public static var sample: String { String(decoding: PackageResources.connect_reverse_sample_yaml, as: UTF8.self) }

    public let listen: BindAddress
    public let connectTimeout: Duration
    public let maxIdleTunnels: Int

    public static func decode(_ options: ConfigMapping) -> ConnectReverseConfig? {
        let listen = options.required("listen")?.parsed(BindAddress.parse)
        let timeout = options.optional("connect_timeout", default: Duration.seconds(5)) { $0.duration(atLeast: .milliseconds(100)) }
        let maxIdle = options.optional("max_idle_tunnels", default: 64) { $0.int(in: 1...100_000) }
        guard let listen, let timeout, let maxIdle else { return nil }
        return ConnectReverseConfig(listen: listen, connectTimeout: timeout, maxIdleTunnels: maxIdle)
    }

    /// A tunnel carries many connections: the pipeline needs `transform.mux side: client`.
    public func pipelineError(stages: [any StageConfig]) -> String? {
        stages.contains { ($0 as? any MultiplexingConfig)?.multiplexingSide == .client }
            ? nil : "needs a transform.mux stage with side: client (each connection goes through the tunnel as a stream)"
    }

    public func makeStage(_ context: StageContext) -> any Stage { ConnectReverse(config: self) }
}

/// The stage: a connector that takes a tunnel, and a service that keeps the tunnel socket bound while the
/// pipeline runs. The socket is shared by address (TunnelEndpoint), so a reload that keeps the address keeps
/// the tunnels too, whichever instance of the stage the new pipeline holds.
struct ConnectReverse: StreamConnector, ServiceStage {
    let config: ConnectReverseConfig

    func start() async throws { try await TunnelEndpoint.acquire(config.listen, maxIdle: config.maxIdleTunnels) }

    func stop() async { await TunnelEndpoint.release(config.listen) }

    func retire() async {}

    func connect(_ connection: ConnectionInfo, bootstrap: ClientBootstrap) -> EventLoopFuture<any Channel> {
        guard let endpoint = TunnelEndpoint.running(config.listen) else {
            return connection.eventLoop.makeFailedFuture(NoTunnel(listen: config.listen))
        }
        return endpoint.take(on: connection.eventLoop, timeout: TimeAmount(config.connectTimeout))
    }
}

struct NoTunnel: Error, CustomStringConvertible {
    let listen: BindAddress
    var description: String { "no tunnel from an inner agent on \(listen)" }
}

/// The socket inner agents dial in to, and the tunnels they opened that no carrier uses yet.
final class TunnelEndpoint: Sendable {
    private static let registry = NIOLockedValueBox<[BindAddress: (endpoint: TunnelEndpoint, users: Int)]>([:])

    /// Binds `address` for its first user; later users share it (the latest one's `maxIdle` applies).
    static func acquire(_ address: BindAddress, maxIdle: Int) async throws {
        let existing = registry.withLockedValue { registry -> TunnelEndpoint? in
            guard registry[address] != nil else { return nil }
            registry[address]!.users += 1
            return registry[address]!.endpoint
        }
        if let existing {
            existing.setMaxIdle(maxIdle)
            return
        }
        let endpoint = TunnelEndpoint(maxIdle: maxIdle)
        try await endpoint.bind(address)
        let raced = registry.withLockedValue { registry -> Bool in
            if registry[address] != nil {
                registry[address]!.users += 1
                return true
            }
            registry[address] = (endpoint, 1)
            return false
        }
        if raced {
            await endpoint.close()
            running(address)?.setMaxIdle(maxIdle)
        }
    }

    /// Closes the socket and its idle tunnels when its last user stops.
    static func release(_ address: BindAddress) async {
        let last = registry.withLockedValue { registry -> TunnelEndpoint? in
            guard let entry = registry[address] else { return nil }
            if entry.users > 1 {
                registry[address]!.users -= 1
                return nil
            }
            registry[address] = nil
            return entry.endpoint
        }
        await last?.close()
    }

    static func running(_ address: BindAddress) -> TunnelEndpoint? { registry.withLockedValue { $0[address]?.endpoint } }

    private struct State {
        var idle: [any Channel] = []
        var waiting: [(promise: EventLoopPromise<any Channel>, timeout: Scheduled<Void>)] = []
        var listener: (any Channel)?
        /// `max_idle_tunnels`. Anyone who can reach the socket can dial in, and what dialed is only known to
        /// be an inner agent once a carrier's handshake (TLS) runs on it, so the waiting ones are bounded: past
        /// the limit the oldest is closed. A flood then costs this agent at most this many descriptors, and a
        /// real inner agent dials again at once.
        var maxIdle: Int
    }

    private let state: NIOLockedValueBox<State>

    private init(maxIdle: Int) { state = NIOLockedValueBox(State(maxIdle: maxIdle)) }

    private func setMaxIdle(_ maxIdle: Int) { state.withLockedValue { $0.maxIdle = maxIdle } }

    /// Tunnels waiting for a carrier now.
    var idleCount: Int { state.withLockedValue { $0.idle.count } }

    private func bind(_ address: BindAddress) async throws {
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { tunnel in
                self.arrived(tunnel)
                return tunnel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(to: address.socketAddress())
            .get()
        state.withLockedValue { $0.listener = listener }
    }

    private func close() async {
        let (listener, idle) = state.withLockedValue { state in
            defer {
                state.idle = []
                state.listener = nil
            }
            return (state.listener, state.idle)
        }
        for tunnel in idle { tunnel.close(promise: nil) }
        try? await listener?.close()
    }

    /// An inner agent dialed in: the oldest waiting connection gets the tunnel, else it waits for one (and
    /// the oldest waiting tunnel is closed when there are more than `maxIdle`).
    private func arrived(_ tunnel: any Channel) {
        let (waiter, evicted) = state.withLockedValue { state -> ((promise: EventLoopPromise<any Channel>, timeout: Scheduled<Void>)?, (any Channel)?) in
            if !state.waiting.isEmpty { return (state.waiting.removeFirst(), nil) }
            state.idle.append(tunnel)
            return (nil, state.idle.count > state.maxIdle ? state.idle.removeFirst() : nil)
        }
        evicted?.close(promise: nil)
        if let waiter {
            waiter.timeout.cancel()
            waiter.promise.succeed(tunnel)
            return
        }
        // An idle tunnel whose agent went away is no longer offered.
        let id = ObjectIdentifier(tunnel)
        tunnel.closeFuture.whenComplete { _ in
            self.state.withLockedValue { $0.idle.removeAll { ObjectIdentifier($0) == id } }
        }
    }

    /// The oldest open tunnel, or the next to arrive within `timeout`.
    func take(on eventLoop: any EventLoop, timeout: TimeAmount) -> EventLoopFuture<any Channel> {
        let promise = eventLoop.makePromise(of: (any Channel).self)
        let tunnel = state.withLockedValue { state -> (any Channel)? in
            if !state.idle.isEmpty { return state.idle.removeFirst() }
            let timeout = eventLoop.scheduleTask(in: timeout) {
                let expired = self.state.withLockedValue { state -> Bool in
                    let before = state.waiting.count
                    state.waiting.removeAll { $0.promise.futureResult === promise.futureResult }
                    return state.waiting.count < before
                }
                if expired { promise.fail(NoTunnelInTime()) }
            }
            state.waiting.append((promise, timeout))
            return nil
        }
        if let tunnel { promise.succeed(tunnel) }
        return promise.futureResult
    }
}

struct NoTunnelInTime: Error, CustomStringConvertible {
    var description: String { "no inner agent had a tunnel open in time" }
}
