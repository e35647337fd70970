import NIOCore
import NIOPosix
import WeirCore

// What the stream listeners of this family share: the listening socket, and the end of a negotiation.

/// The listening socket every stream listener uses: accepted channels start with autoRead off (the runtime
/// reads once its handlers are in place) and remote half-closure allowed.
enum StreamSocket {
    static func bind(
        _ address: BindAddress, backlog: Int, group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: Int32(backlog))
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer(childInitializer)
            .bind(to: address.socketAddress())
            .get()
    }
}

extension ChannelPipeline.SynchronousOperations {
    /// Ends a negotiation: removes the negotiating handler, then the decoder in front of it, which hands what
    /// the client sent after its request (a TLS ClientHello, early data) to the glue behind. Those bytes
    /// arrive outside a read cycle, so a read-complete follows them: the glue flushes on it.
    func handOver(from negotiator: ChannelHandlerContext, then decoder: any RemovableChannelHandler) {
        let channel = negotiator.channel
        removeHandler(context: negotiator, promise: nil)
        let removed = channel.eventLoop.makePromise(of: Void.self)
        removeHandler(decoder, promise: removed)
        removed.futureResult.whenSuccess { channel.pipeline.fireChannelReadComplete() }
    }
}
