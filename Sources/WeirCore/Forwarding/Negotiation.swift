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
