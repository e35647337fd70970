import NIOCore
import WeirCore

/// `limit.bandwidth`: a token-bucket rate limit in each direction, per connection or for the whole pipeline.
public struct LimitBandwidthConfig: StageConfig {
    public enum Scope: String, Sendable, CaseIterable {
        case connection, pipeline
    }

    public static let type = "limit.bandwidth"
    public static let summary = "Limit bytes per second in each direction, per connection or shared by the pipeline (token bucket)."
    public static let role = StageRole.filter([.stream, .datagram])
    public static let options = [
        OptionDoc("rate", "rate", "Limit in each direction: 10MiB/s, 500KB/s, 80mbit, 1gbit (required)."),
        OptionDoc("per", "connection|pipeline", default: "connection", "One bucket per connection, or one shared by all of the pipeline's connections."),
        OptionDoc("burst", "bytes", default: "rate × 50ms, at least 64KiB", "Bucket size: bytes that may pass at once after a pause."),
    ]
    public static var sample: String { String(decoding: PackageResources.limit_bandwidth_sample_yaml, as: UTF8.self) }

    /// Bytes per second.
    public let rate: Double
    public let per: Scope
    public let burst: Double

    public static func decode(_ options: ConfigMapping) -> LimitBandwidthConfig? {
        let rate = options.required("rate")?.parsed(ByteRateParser.parse)
        let per = options.optional("per", default: Scope.connection) { $0.oneOf(Scope.self) }
        let burst = options.optional("burst", default: Double?.none) { value in
            value.int(in: 1...(1 << 40)).map { Optional(Double($0)) }
        }
        guard let rate, let per, let burst else { return nil }
        return LimitBandwidthConfig(rate: rate, per: per, burst: burst ?? max(rate * 0.05, 65536))
    }

    public func makeStage(_ context: StageContext) -> any Stage { LimitBandwidth(config: self) }
}

struct LimitBandwidth: PacingStreamFilter, DatagramFilter {
    let config: LimitBandwidthConfig
    /// The pipeline-wide buckets; nil when each connection has its own.
    private let shared: [TrafficDirection: SharedTokenBucket]?

    init(config: LimitBandwidthConfig) {
        self.config = config
        shared = config.per == .pipeline ? Self.makeBuckets(config) : nil
    }

    private static func makeBuckets(_ config: LimitBandwidthConfig) -> [TrafficDirection: SharedTokenBucket] {
        let now = NIODeadline.now()
        return [
            .in: SharedTokenBucket(TokenBucket(rate: config.rate, burst: config.burst, now: now)),
            .out: SharedTokenBucket(TokenBucket(rate: config.rate, burst: config.burst, now: now)),
        ]
    }

    private func buckets() -> [TrafficDirection: SharedTokenBucket] { shared ?? Self.makeBuckets(config) }

    func handlers(for connection: ConnectionInfo) -> StreamFilterHandlers {
        let buckets = buckets()
        return StreamFilterHandlers(
            clientSide: [BandwidthThrottle(bucket: buckets[.in]!)],
            targetSide: [BandwidthThrottle(bucket: buckets[.out]!)])
    }

    /// A plain forward's connections are relayed on raw sockets; the same buckets pace them there.
    func pacers() -> (toTarget: any StreamPacer, toClient: any StreamPacer) {
        let buckets = buckets()
        return (buckets[.in]!, buckets[.out]!)
    }

    func sessionFilter(for connection: ConnectionInfo) -> any DatagramSessionFilter {
        DatagramPolicer(buckets: buckets())
    }
}
