import NIOCore
import NIOHTTP2
import WeirCore

/// `transform.mux`: many client connections as HTTP/2 streams of one long-lived connection between two agents,
/// so a relay pays its TCP, TLS and WebSocket handshakes once per carrier instead of once per connection.
public struct TransformMuxConfig: MultiplexingConfig {
    public enum Side: String, Sendable, CaseIterable {
        case client, server
    }

    public static let type = "transform.mux"
    public static let summary = "Carry many connections as HTTP/2 streams of one agent-to-agent connection, with a ping keepalive."
    public static let role = StageRole.filter([.stream])
    public static let options = [
        OptionDoc("side", "client|server", "client: stages before it act per connection, stages after it once on the shared carrier; server: the reverse (required)."),
        OptionDoc("max_streams", "integer", default: "1000", "Concurrent streams per carrier; the client opens another carrier when one is full, the server advertises it."),
        OptionDoc("keepalive", "duration", default: "15s", "Client: how often the carrier is pinged (the round trip is weir_relay_latency_seconds with connect.relay); unanswered for two intervals closes it."),
        OptionDoc("idle_timeout", "duration", default: "5m", "Client: a carrier without streams for this long is closed."),
        OptionDoc("window", "bytes", default: "1048576", "Flow-control window of each stream: how much one stream may have in flight."),
    ]
    public static var sample: String { String(decoding: PackageResources.transform_mux_sample_yaml, as: UTF8.self) }

    public let side: Side
    public let maxStreams: Int
    public let keepalive: Duration
    public let idleTimeout: Duration
    public let window: Int

    public static func decode(_ options: ConfigMapping) -> TransformMuxConfig? {
        let side = options.required("side")?.oneOf(Side.self)
        let maxStreams = options.optional("max_streams", default: 1000) { $0.int(in: 1...100_000) }
        func duration(_ key: String, _ defaultValue: Duration) -> Duration? {
            options.optional(key, default: defaultValue) { $0.duration(atLeast: .seconds(1)) }
        }
        let keepalive = duration("keepalive", .seconds(15))
        let idleTimeout = duration("idle_timeout", .seconds(300))
        // HTTP/2 windows are 31-bit; below 64 KiB a single stream would crawl.
        let window = options.optional("window", default: 1 << 20) { $0.int(in: 65535...(1 << 30)) }
        guard let side, let maxStreams, let keepalive, let idleTimeout, let window else { return nil }
        return TransformMuxConfig(side: side, maxStreams: maxStreams, keepalive: keepalive, idleTimeout: idleTimeout, window: window)
    }

    public var multiplexingSide: MultiplexingSide { side == .client ? .client : .server }

    /// Counts a carrier's failures as `transform.mux`/`mux_failed`; both sides put one behind the carrier's
    /// HTTP/2 handlers.
    static func failureLabel(_ metrics: PipelineMetrics) -> StageFailureLabel {
        StageFailureLabel(stage: type, reason: "mux_failed", metrics: metrics)
    }

    /// Each stream's request carries the destination the client side's connection named.
    public var namesDestination: Bool { side == .server }

    public func makeStage(_ context: StageContext) -> any Stage { TransformMux(config: self, metrics: context.metrics) }
}

final class TransformMux: StreamMultiplexingFilter {
    let config: TransformMuxConfig
    let metrics: PipelineMetrics
    /// Client side: the carriers this pipeline dialed. Nothing is dialed until the first connection.
    private let carriers: MuxCarriers

    init(config: TransformMuxConfig, metrics: PipelineMetrics) {
        self.config = config
        self.metrics = metrics
        carriers = MuxCarriers(config: config, metrics: metrics)
    }

    var multiplexingSide: MultiplexingSide { config.multiplexingSide }

    // The mux has no handlers of its own per connection: it is the boundary between connection and carrier.
    func handlers(for connection: ConnectionInfo) -> StreamFilterHandlers { StreamFilterHandlers() }

    func openStream(
        for connection: ConnectionInfo, dial: @escaping @Sendable (any EventLoop) -> EventLoopFuture<any Channel>
    ) -> EventLoopFuture<any Channel> {
        carriers.openStream(destination: connection.destination, on: connection.eventLoop, dial: dial)
    }

    func serve(carrier: any Channel, accept: @escaping @Sendable (any Channel, Destination?) -> Void) throws {
        let management = NIOHTTP2ServerConnectionManagementHandler(
            eventLoop: carrier.eventLoop,
            // Graceful close on reload (GOAWAY, then streams finish); the client pings, the server only answers.
            configuration: .init(maxIdleTime: nil, maxAge: nil, maxGraceTime: nil, keepalive: nil))
        try carrier.pipeline.syncOperations.configureHTTP2Pipeline(
            mode: .server, connectionConfiguration: MuxSettings.connection(config), streamConfiguration: MuxSettings.stream(config),
            streamDelegate: management.http2StreamDelegate
        ) { stream in
            stream.eventLoop.makeCompletedFuture {
                try stream.syncOptions?.setOption(.autoRead, value: false)
                try stream.pipeline.syncOperations.addHandler(MuxStreamHandler(opening: .accepted(accept)))
            }
        }
        try carrier.pipeline.syncOperations.addHandlers([management, TransformMuxConfig.failureLabel(metrics)])
        // A carrier's end of input is its end: HTTP/2 has no use for a half-closed connection.
        try carrier.syncOptions?.setOption(.allowRemoteHalfClosure, value: false)
        try carrier.syncOptions?.setOption(.autoRead, value: true)
    }
}

/// The HTTP/2 settings both sides use.
enum MuxSettings {
    static func connection(_ config: TransformMuxConfig) -> NIOHTTP2Handler.ConnectionConfiguration {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: config.maxStreams),
            HTTP2Setting(parameter: .initialWindowSize, value: config.window),
            HTTP2Setting(parameter: .maxFrameSize, value: 1 << 16),
            HTTP2Setting(parameter: .maxHeaderListSize, value: 16 << 10),
        ]
        // Room for every stream's window at once would be unbounded; a few windows' worth keeps many streams
        // moving without letting a carrier buffer more than that.
        connection.targetWindowSize = min(Int(Int32.max), config.window * 16)
        // Streams come and go by the thousand on a busy relay; resets are normal, not an attack.
        connection.maximumRecentlyResetStreams = max(connection.maximumRecentlyResetStreams, config.maxStreams)
        return connection
    }

    static func stream(_ config: TransformMuxConfig) -> NIOHTTP2Handler.StreamConfiguration {
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.targetWindowSize = config.window
        stream.outboundBufferSizeHighWatermark = 256 << 10
        stream.outboundBufferSizeLowWatermark = 128 << 10
        stream.streamResetFrameRateLimit.maximumCount = max(200, config.maxStreams * 4)
        stream.streamErrorRateLimit.maximumCount = max(200, config.maxStreams * 4)
        return stream
    }
}
