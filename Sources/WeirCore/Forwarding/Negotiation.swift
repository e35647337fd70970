import NIOCore

// Pieces every negotiation (a listener's, or a transform's that reads the destination from its stream) uses.

/// A negotiating handler on an accepted channel, which has autoRead off: it asks for one read at a time,
/// from the moment the channel is active until it has decided.
public protocol ReadsUntilDecided: ChannelInboundHandler {
    var decided: Bool { get }
}

extension ReadsUntilDecided {
    /// For `handlerAdded`: a channel that is already active gets its first read now.
    public func readIfActive(_ context: ChannelHandlerContext) {
        if context.channel.isActive { context.read() }
    }

    public func channelActive(context: ChannelHandlerContext) {
        context.read()
        context.fireChannelActive()
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if !decided { context.read() }
        context.fireChannelReadComplete()
    }
}

/// How a negotiation fails when its connection closes before it decided: the client went away during its
/// opening (counted as `closed_during_handshake`, like a client the opening guard saw leave part-way; the
/// listener had answered, so the client had sent something).
public struct ClientWentAway: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "the client went away during its opening" }
}

/// Adds a negotiation's handlers to an accepted channel; if that fails, so do the negotiation and the channel.
public func install(_ handlers: [any ChannelHandler], on channel: any Channel, for promise: EventLoopPromise<Destination>) -> EventLoopFuture<Destination> {
    do {
        try channel.pipeline.syncOperations.addHandlers(handlers)
    } catch {
        promise.fail(error)
        channel.close(promise: nil)
    }
    return promise.futureResult
}

extension ChannelPipeline.SynchronousOperations {
    /// Ends a negotiation: removes the negotiating handler, then the decoder in front of it, which hands what
    /// the client sent after its request (a TLS ClientHello, early data) to the glue behind. Those bytes
    /// arrive outside a read cycle, so a read-complete follows them: the glue flushes on it.
    public func handOver(from negotiator: ChannelHandlerContext, then decoder: any RemovableChannelHandler) {
        let channel = negotiator.channel
        removeHandler(context: negotiator, promise: nil)
        let removed = channel.eventLoop.makePromise(of: Void.self)
        removeHandler(decoder, promise: removed)
        removed.futureResult.whenSuccess { channel.pipeline.fireChannelReadComplete() }
    }
}

/// The failure a negotiation reports when its listener took the connection over itself (a SOCKS5 UDP
/// association): nothing is to be connected, and nothing went wrong.
public struct HandledByListener: Error, CustomStringConvertible {
    public let what: String
    public init(what: String) { self.what = what }
    public var description: String { "\(what): handled by the listener" }
}

/// Sits at the end of an accepted channel until the glue is in place, and keeps what reaches it meanwhile.
///
/// The channel has autoRead off until then, but a socket whose client already closed its end is read to that
/// end regardless (NIO reads everything once it sees EOF): a client that sends a small request and
/// half-closes while the target is still being connected would otherwise lose both the bytes and the end of
/// input. Bytes a negotiation hands over when it succeeds pass through here too. `release` passes everything
/// on in order, once the glue behind it can take it. Touched only on its channel's loop (the forwarder's
/// callbacks that carry it run there).
final class EarlyInputHold: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = NIOAny

    private enum Held {
        case read(NIOAny)
        case readComplete
        case inputClosed
    }

    private var holding = true
    private var held: [Held] = []
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if holding { held.append(.read(data)) } else { context.fireChannelRead(data) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if holding { held.append(.readComplete) } else { context.fireChannelReadComplete() }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if holding, case .inputClosed = event as? ChannelEvent {
            held.append(.inputClosed)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// From here everything passes; what was kept is passed on now, in the order it came.
    func release() {
        holding = false
        guard let context, !held.isEmpty else { return }
        let kept = held
        held = []
        for item in kept {
            switch item {
            case .read(let data): context.fireChannelRead(data)
            case .readComplete: context.fireChannelReadComplete()
            case .inputClosed: context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
        }
    }
}
