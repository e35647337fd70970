import NIOCore

/// An error a stage's handlers raised on a connection, labelled with the stage and a reason (and counted in
/// `weir_pipeline_errors_total{stage,reason}` where it was labelled).
public struct StageFailure: Error, CustomStringConvertible {
    public let stage: String
    public let reason: String
    public let underlying: any Error

    public var description: String { "\(stage) \(reason): \(underlying)" }
}

/// Placed right behind a stage's handlers: labels and counts every error coming from them (or from below them)
/// that no stage has labelled yet — whether or not the connection's glue is in place yet. A TLS handshake that
/// fails becomes `transform.tls`/`tls_failed`, counted once.
public final class StageFailureLabel: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    private let stage: String
    private let reason: String
    private let metrics: PipelineMetrics

    public init(stage: String, reason: String, metrics: PipelineMetrics) {
        self.stage = stage
        self.reason = reason
        self.metrics = metrics
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Already labelled below; or the opening guard closed the connection and counted why (the TLS
        // handshake that then fails is not a second error).
        let closedByGuard = (try? context.pipeline.syncOperations.handler(type: OpeningGuard.self))?.closedTheConnection == true
        guard !(error is StageFailure), !closedByGuard else {
            context.fireErrorCaught(error)
            return
        }
        metrics.error(stage: stage, reason: reason)
        context.fireErrorCaught(StageFailure(stage: stage, reason: reason, underlying: error))
    }
}
