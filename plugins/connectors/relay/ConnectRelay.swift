import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import WeirCore

#if canImport(Glibc)
import Glibc
#endif

/// `connect.relay`: dials the next agent of a relay chain, failing over between next hops and measuring how
/// far away each one is.
public struct ConnectRelayConfig: StageConfig {
    public static let type = "connect.relay"
    public static let summary = "Dial the next agent of a relay: several next hops with failover, TCP keepalive, latency per peer."
    public static let role = StageRole.connector(.stream)
    public static let options = [
        OptionDoc("peers", "list of host:port", "Next-hop agents, preferred in order; one that fails is skipped until its retry time (required)."),
        OptionDoc("connect_timeout", "duration", default: "3s", "Time allowed for each peer."),
        OptionDoc("keepalive", "duration", default: "15s", "TCP keepalive idle time on relay connections, and how often their round-trip time is sampled."),
        OptionDoc("max_backoff", "duration", default: "30s", "Longest wait before a failed peer is preferred again (1s, doubling per failure)."),
    ]
    public static var sample: String { String(decoding: PackageResources.connect_relay_sample_yaml, as: UTF8.self) }

    public let peers: [HostPort]
    public let connectTimeout: Duration
    public let keepalive: Duration
    public let maxBackoff: Duration

    public static func decode(_ options: ConfigMapping) -> ConnectRelayConfig? {
        let peers = options.required("peers").flatMap { $0.hostPorts() }
        func duration(_ key: String, _ defaultValue: Duration) -> Duration? {
            options.optional(key, default: defaultValue) { $0.duration(atLeast: .seconds(1)) }
        }
        let timeout = duration("connect_timeout", .seconds(3))
        let keepalive = duration("keepalive", .seconds(15))
        let maxBackoff = duration("max_backoff", .seconds(30))
        guard let peers, let timeout, let keepalive, let maxBackoff else { return nil }
        return ConnectRelayConfig(peers: peers, connectTimeout: timeout, keepalive: keepalive, maxBackoff: maxBackoff)
    }

    public func makeStage(_ context: StageContext) -> any Stage { ConnectRelay(config: self, metrics: context.metrics) }
}

final class ConnectRelay: StreamConnector {
    let config: ConnectRelayConfig
    private let health: NIOLockedValueBox<PeerHealth>
    private let peers: [Peer]

    /// A next hop and its series.
    struct Peer: Sendable {
        let address: HostPort
        let literal: SocketAddress?
        let latency: Prometheus.Gauge
        let up: Prometheus.Gauge
        let failures: Prometheus.Counter
    }

    init(config: ConnectRelayConfig, metrics: PipelineMetrics) {
        self.config = config
        health = NIOLockedValueBox(PeerHealth(count: config.peers.count, maxBackoff: TimeAmount(config.maxBackoff)))
        peers = config.peers.map { address in
            let labels = [("peer", address.description)]
            return Peer(
                address: address, literal: try? SocketAddress(ipAddress: address.host, port: address.port),
                latency: metrics.gauge(
                    "weir_relay_latency_seconds", labels: labels,
                    help: "Round-trip time to the next-hop agent: the TCP handshake of each relay connection, then the kernel's smoothed RTT of open ones."),
                up: metrics.gauge("weir_relay_peer_up", labels: labels, help: "1 when the next hop answered its last connection attempt, else 0."),
                failures: metrics.counter("weir_relay_connect_failures_total", labels: labels, help: "Connection attempts to the next hop that failed."))
        }
    }

    func connect(_ connection: ConnectionInfo, bootstrap: ClientBootstrap) -> EventLoopFuture<any Channel> {
        let idle = Int(config.keepalive.components.seconds)
        let bootstrap = bootstrap.connectTimeout(TimeAmount(config.connectTimeout))
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPIDLE)), value: idle)
            .channelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPINTVL)), value: max(1, idle / 3))
            .channelOption(ChannelOptions.Types.SocketOption(level: .tcp, name: NIOBSDSocket.Option(rawValue: TCP_KEEPCNT)), value: 3)
        let order = health.withLockedValue { $0.order(at: .now()) }
        return attempt(order[...], bootstrap: bootstrap, eventLoop: connection.eventLoop, errors: [])
    }

    private func attempt(_ order: ArraySlice<Int>, bootstrap: ClientBootstrap, eventLoop: any EventLoop, errors: [String]) -> EventLoopFuture<any Channel> {
        guard let index = order.first else {
            return eventLoop.makeFailedFuture(AllTargetsFailed(errors: errors))
        }
        let peer = peers[index]
        let started = NIODeadline.now()
        let future = bootstrap.connect(to: peer.address, literal: peer.literal)
        // Runs on the client's event loop (the bootstrap's group), where the bootstrap may be reused.
        return future.assumeIsolated().map { channel in
            self.health.withLockedValue { $0.succeeded(index) }
            peer.up.set(to: 1)
            peer.latency.set(to: Double((NIODeadline.now() - started).nanoseconds) / 1e9)
            self.sampleRoundTrips(channel, peer: peer)
            // A multiplexed carrier pings over the connection and reports the round trip here.
            try? channel.pipeline.syncOperations.addHandler(RoundTripRecorder(latency: peer.latency), position: .first)
            return channel
        }.flatMapError { error in
            self.health.withLockedValue { $0.failed(index, at: .now()) }
            peer.up.set(to: 0)
            peer.failures.increment()
            return self.attempt(order.dropFirst(), bootstrap: bootstrap, eventLoop: eventLoop, errors: errors + ["\(peer.address): \(error)"])
        }.nonisolated()
    }

    /// While the connection is open, records the kernel's smoothed round-trip time every keepalive interval.
    private func sampleRoundTrips(_ channel: any Channel, peer: Peer) {
        let interval = TimeAmount(config.keepalive)
        let task = channel.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            guard let provider = channel as? any SocketOptionProvider else { return }
            provider.getTCPInfo().whenSuccess { info in
                if info.tcpi_rtt > 0 { peer.latency.set(to: Double(info.tcpi_rtt) / 1e6) }
            }
        }
        channel.closeFuture.whenComplete { _ in task.cancel() }
    }
}

/// Records round trips that a protocol on the relay connection measured (transform.mux's pings).
final class RoundTripRecorder: ChannelOutboundHandler {
    typealias OutboundIn = NIOAny
    private let latency: Prometheus.Gauge

    init(latency: Prometheus.Gauge) { self.latency = latency }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let measured = event as? MeasuredRoundTrip else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        latency.set(to: measured.seconds)
        promise?.succeed()
    }
}
