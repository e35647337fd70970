import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import WeirCore

/// `listen.reverse`: for an agent behind NAT. Instead of listening, it keeps connections open to a public
/// agent's `connect.reverse`, which sends its clients back through them; each such connection is a
/// multiplexed carrier (`transform.mux side: server` later in the pipeline), whose streams are the public
/// agent's clients.
public struct ListenReverseConfig: StageConfig {
    public static let type = "listen.reverse"
    public static let summary = "Dial out to a public agent's connect.reverse and serve the clients it sends back (reverse tunnel)."
    public static let role = StageRole.listener(.stream)
    public static let options = [
        OptionDoc("peers", "list of host:port", "The public agents' connect.reverse addresses, tried in order (required)."),
        OptionDoc("connections", "integer", default: "1", "Tunnel connections kept open; each carries any number of client connections."),
        OptionDoc("connect_timeout", "duration", default: "5s", "Time allowed for each dial."),
        OptionDoc("max_backoff", "duration", default: "30s", "Longest wait before dialing again after every peer failed (1s, doubling)."),
    ]
    public static var sample: String { String(decoding: PackageResources.listen_reverse_sample_yaml, as: UTF8.self) }

    public let peers: [HostPort]
    public let connections: Int
    public let connectTimeout: Duration
    public let maxBackoff: Duration

    public static func decode(_ options: ConfigMapping) -> ListenReverseConfig? {
        let peers = options.required("peers").flatMap { $0.hostPorts() }
        let connections = options.optional("connections", default: 1) { $0.int(in: 1...64) }
        func duration(_ key: String, _ defaultValue: Duration) -> Duration? {
            options.optional(key, default: defaultValue) { $0.duration(atLeast: .seconds(1)) }
        }
        let timeout = duration("connect_timeout", .seconds(5))
        let maxBackoff = duration("max_backoff", .seconds(30))
        guard let peers, let connections, let timeout, let maxBackoff else { return nil }
        return ListenReverseConfig(peers: peers, connections: connections, connectTimeout: timeout, maxBackoff: maxBackoff)
    }

    /// Its connections carry streams: a pipeline with it needs `transform.mux side: server`.
    public func pipelineError(stages: [any StageConfig]) -> String? {
        stages.contains { ($0 as? any MultiplexingConfig)?.multiplexingSide == .server }
            ? nil : "needs a transform.mux stage with side: server (the tunnel carries each client as a stream)"
    }

    public func makeStage(_ context: StageContext) -> any Stage { ListenReverse(config: self, metrics: context.metrics) }
}

struct ListenReverse: DialingStreamListener {
    let config: ListenReverseConfig
    let metrics: PipelineMetrics

    func startDialing(group: any EventLoopGroup, accept: @escaping @Sendable (any Channel) -> Void) -> any ListenerDialer {
        let open = metrics.gauge("weir_reverse_tunnels_open", labels: [], help: "Tunnel connections listen.reverse has open to a public agent.")
        let failures = metrics.counter(
            "weir_reverse_tunnel_failures_total", labels: [], help: "Dials by listen.reverse that failed, and tunnels that closed.")
        let dialer = ReverseDialer(config: config, group: group, accept: accept, open: open, failures: failures)
        for slot in 0..<config.connections { dialer.dial(slot: slot, attempt: 0) }
        return dialer
    }
}

/// Keeps `connections` tunnels open: each slot dials the peers in order, hands a connection over, and dials
/// again once it closes — at once after a tunnel that worked, after a doubling wait when every peer failed.
final class ReverseDialer: ListenerDialer, Sendable {
    private let config: ListenReverseConfig
    /// IP literals among the peers, parsed once; names are resolved on every dial.
    private let literals: [SocketAddress?]
    private let group: any EventLoopGroup
    private let accept: @Sendable (any Channel) -> Void
    private let open: Prometheus.Gauge
    private let failures: Prometheus.Counter
    private let state = NIOLockedValueBox(State())

    private struct State {
        var stopped = false
        /// Each slot's pending redial.
        var retries: [Int: Scheduled<Void>] = [:]
    }

    init(
        config: ListenReverseConfig, group: any EventLoopGroup, accept: @escaping @Sendable (any Channel) -> Void,
        open: Prometheus.Gauge, failures: Prometheus.Counter
    ) {
        self.config = config
        self.literals = config.peers.map { try? SocketAddress(ipAddress: $0.host, port: $0.port) }
        self.group = group
        self.accept = accept
        self.open = open
        self.failures = failures
    }

    func stop() {
        let retries = state.withLockedValue { state in
            state.stopped = true
            return state.retries
        }
        for retry in retries.values { retry.cancel() }
    }

    /// Dials peer after peer; `attempt` counts the rounds in which every peer failed.
    func dial(slot: Int, attempt: Int, peer: Int = 0) {
        guard !state.withLockedValue({ $0.stopped }) else { return }
        let eventLoop = group.next()
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(TimeAmount(config.connectTimeout))
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.so_keepalive), value: 1)
        bootstrap.connect(to: config.peers[peer], literal: literals[peer]).whenComplete { result in
            switch result {
            case .success(let tunnel):
                self.handOver(tunnel, slot: slot)
            case .failure:
                self.failures.increment()
                if peer + 1 < self.config.peers.count {
                    self.dial(slot: slot, attempt: attempt, peer: peer + 1)
                } else {
                    self.retry(slot: slot, attempt: attempt + 1, on: eventLoop)
                }
            }
        }
    }

    private func handOver(_ tunnel: any Channel, slot: Int) {
        guard !state.withLockedValue({ $0.stopped }) else {
            tunnel.close(promise: nil)
            return
        }
        open.increment()
        tunnel.closeFuture.whenComplete { _ in
            self.open.decrement()
            self.failures.increment()
            // A tunnel that ends is replaced; a short pause keeps a peer that accepts and drops at once from
            // being dialed in a tight loop.
            self.retry(slot: slot, attempt: 0, on: tunnel.eventLoop)
        }
        accept(tunnel)
    }

    private func retry(slot: Int, attempt: Int, on eventLoop: any EventLoop) {
        // 0 → 0.5 s after a tunnel that closed; then 1 s, 2 s, 4 s … up to max_backoff after failed rounds.
        let maximum = TimeAmount(config.maxBackoff)
        let delay = attempt == 0 ? .milliseconds(500) : min(maximum, .seconds(1) * (1 << min(attempt - 1, 20)))
        state.withLockedValue { state in
            guard !state.stopped else { return }
            state.retries[slot] = eventLoop.scheduleTask(in: delay) { self.dial(slot: slot, attempt: attempt) }
        }
    }
}
