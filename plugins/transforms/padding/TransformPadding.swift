import NIOCore
import WeirCore

/// `transform.padding`: frames with random-length padding, so the sizes of what crosses the wire say less about
/// what is inside. Both ends run it with the same bounds.
public struct TransformPaddingConfig: StageConfig {
    public enum Side: String, Sendable, CaseIterable {
        case client, server
    }

    public static let type = "transform.padding"
    public static let summary = "Add random-length padding to every frame to blur packet sizes; both ends must run it."
    public static let role = StageRole.filter([.stream])
    public static let options = [
        OptionDoc("side", "client|server", "server: unpad what clients send (the accepted connection); client: pad towards the target (required)."),
        OptionDoc("min_padding", "bytes", default: "0", "Fewest padding bytes per frame."),
        OptionDoc("max_padding", "bytes", default: "255", "Most padding bytes per frame (at most 16383); the peer refuses frames with more, so both ends use the same bounds."),
    ]
    public static var sample: String { String(decoding: PackageResources.transform_padding_sample_yaml, as: UTF8.self) }

    public let side: Side
    public let padding: ClosedRange<Int>

    public static func decode(_ options: ConfigMapping) -> TransformPaddingConfig? {
        let side = options.required("side")?.oneOf(Side.self)
        let minimum = options.optional("min_padding", default: 0) { $0.int(in: 0...PaddingFormat.maxData) }
        let maximumValue = options.optional("max_padding")
        let maximum = maximumValue.map { $0.int(in: 0...PaddingFormat.maxData) } ?? 255
        guard let side, let minimum, let maximum else { return nil }
        guard minimum <= maximum else {
            (maximumValue ?? options.value).error("max_padding (\(maximum)) is below min_padding (\(minimum))")
            return nil
        }
        return TransformPaddingConfig(side: side, padding: minimum...maximum)
    }

    public func makeStage(_ context: StageContext) -> any Stage { TransformPadding(config: self, metrics: context.metrics) }
}

struct TransformPadding: StreamFilter {
    let config: TransformPaddingConfig
    let metrics: PipelineMetrics

    func acceptHandlers(for connection: ConnectionInfo) -> [any ChannelHandler] {
        config.side == .server ? [PaddingHandler(padding: config.padding), label()] : []
    }

    func handlers(for connection: ConnectionInfo) -> StreamFilterHandlers {
        config.side == .client ? StreamFilterHandlers(targetSide: [PaddingHandler(padding: config.padding), label()]) : StreamFilterHandlers()
    }

    /// Frames out of bounds are counted as `transform.padding`/`padding_failed`.
    private func label() -> StageFailureLabel { StageFailureLabel(stage: TransformPaddingConfig.type, reason: "padding_failed", metrics: metrics) }
}

/// Pads what is written and unpads what is read on one channel.
final class PaddingHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var framer: PaddingFramer
    private var deframer: PaddingDeframer
    private var failed = false

    init(padding: ClosedRange<Int>) {
        framer = PaddingFramer(padding: padding)
        deframer = PaddingDeframer(maxPadding: padding.upperBound)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        do {
            let plain = try deframer.feed(unwrapInboundIn(data))
            if plain.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(plain)) }
        } catch {
            failed = true
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let plain = unwrapOutboundIn(data)
        var framed = context.channel.allocator.buffer(capacity: plain.readableBytes + 64)
        framer.frame(plain, into: &framed)
        context.write(wrapOutboundOut(framed), promise: promise)
    }
}
