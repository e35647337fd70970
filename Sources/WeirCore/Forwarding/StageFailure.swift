import NIOCore

/// An error a stage's handlers raised on a connection, labelled with the stage and a reason, so the glue that
/// closes the connection can count it in `weir_pipeline_errors_total{stage,reason}`.
public struct StageFailure: Error, CustomStringConvertible {
    public let stage: String
    public let reason: String
    public let underlying: any Error

    public var description: String { "\(stage) \(reason): \(underlying)" }
}

/// Placed right behind a stage's handlers: labels every error coming from them (or from below them) that no
/// stage has labelled yet. A TLS handshake that fails becomes `transform.tls`/`tls_failed`.
public final class StageFailureLabel: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    private let stage: String
    private let reason: String

    public init(stage: String, reason: String) {
        self.stage = stage
        self.reason = reason
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.fireErrorCaught(error is StageFailure ? error : StageFailure(stage: stage, reason: reason, underlying: error))
    }
}
