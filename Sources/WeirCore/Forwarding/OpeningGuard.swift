import NIOCore

/// One part of a connection's opening that the client has to complete before data flows: a listener's
/// negotiation (SOCKS5, HTTP CONNECT, a ClientHello), an accept-side transform's handshake (TLS, a WebSocket
/// upgrade) or the address header an AEAD server reads.
public struct OpeningStep: Sendable, Equatable {
    public enum Completion: Sendable, Equatable {
        /// Complete when the stage's negotiation decides (it provides the connection's destination).
        case negotiated
        /// Complete when the stage's handlers call `ChannelHandlerContext.openingCompleted(stage:)`.
        case reported
    }

    /// The stage type, for `weir_pipeline_errors_total{stage}`.
    public let stage: String
    /// How long after the connection was accepted this step may take.
    public let timeout: TimeAmount
    public let completion: Completion

    public init(stage: String, timeout: TimeAmount, completion: Completion) {
        self.stage = stage
        self.timeout = timeout
        self.completion = completion
    }

    /// The default `handshake_timeout` of every stage with an opening.
    public static let defaultTimeout: Duration = .seconds(10)
}

/// Bounds a connection's opening. Nearest the socket, so it sees the client's end of input before any
/// negotiating handler can keep it (a half-close is a legitimate end of a request, but a client that stops
/// sending before its opening is complete can never complete it): until every step is done it closes the
/// connection when the client's input ends or its connection fails (`closed_during_handshake`, or
/// `closed_without_data` when the client never sent a byte) or when a step is not done within its timeout
/// (`handshake_timeout`), counted under the first step not done. Once all steps are done it leaves the
/// pipeline. Touched only on its channel's loop.
public final class OpeningGuard: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    public typealias InboundIn = NIOAny

    private var pending: [OpeningStep]
    private let accepted: NIODeadline
    private let metrics: PipelineMetrics
    private var context: ChannelHandlerContext?
    private var timer: Scheduled<Void>?
    /// Set when this guard closed the connection; the negotiation's own failure is then not counted again.
    public private(set) var closedTheConnection = false
    /// Whether the client sent anything. One that leaves without a byte is a TCP health check or a connect
    /// scan (HAProxy's "null connection"), not an opening that failed: it is counted apart, so that a load
    /// balancer's checks on a quiet listener do not look like clients failing their handshakes.
    private var clientSentData = false

    public init(steps: [OpeningStep], metrics: PipelineMetrics, accepted: NIODeadline = .now()) {
        self.pending = steps
        self.metrics = metrics
        self.accepted = accepted
    }

    public var isComplete: Bool { pending.isEmpty }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        arm()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        self.context = nil
    }

    /// `stage` did its part; the last step done ends the guard.
    public func completed(stage: String) {
        guard let index = pending.firstIndex(where: { $0.stage == stage }) else { return }
        pending.remove(at: index)
        guard pending.isEmpty else {
            arm()
            return
        }
        timer?.cancel()
        timer = nil
        if let context { context.pipeline.syncOperations.removeHandler(context: context, promise: nil) }
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        clientSentData = true
        context.fireChannelRead(data)
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let first = pending.first, case .inputClosed = event as? ChannelEvent {
            abandon(context, stage: first.stage, reason: clientLeftReason)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// An error from the socket (the guard is nearest it; the stages' own errors go the other way): a client
    /// that reset its connection — or fully closed it while the agent answered, which its kernel answers with
    /// a reset — went away as surely as one that sent a FIN.
    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let first = pending.first, error is IOError {
            abandon(context, stage: first.stage, reason: clientLeftReason)
            return
        }
        context.fireErrorCaught(error)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        context.fireChannelInactive()
    }

    private var clientLeftReason: String { clientSentData ? "closed_during_handshake" : "closed_without_data" }

    /// The timer for the first step not done, measured from the accept.
    private func arm() {
        timer?.cancel()
        timer = nil
        guard let context, let first = pending.first else { return }
        let deadline = accepted + first.timeout
        timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            guard let context = self.context, !self.pending.isEmpty else { return }
            self.abandon(context, stage: first.stage, reason: "handshake_timeout")
        }
    }

    private func abandon(_ context: ChannelHandlerContext, stage: String, reason: String) {
        guard !closedTheConnection else { return }
        closedTheConnection = true
        timer?.cancel()
        timer = nil
        metrics.error(stage: stage, reason: reason)
        context.close(promise: nil)
    }
}

extension ChannelHandlerContext {
    /// Tells the connection's opening guard, if it has one, that `stage` completed its handshake.
    public func openingCompleted(stage: String) {
        if let guardHandler = try? pipeline.syncOperations.handler(type: OpeningGuard.self) {
            guardHandler.completed(stage: stage)
        }
    }
}
