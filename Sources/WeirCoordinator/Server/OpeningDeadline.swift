import HummingbirdCore
import Logging
import NIOCore
import Prometheus
import WeirCore

/// Bounds a connection's opening: from the accept until its first request head is complete (the TLS handshake
/// and the head). A client that connects and sends nothing, stalls in the handshake or sends half a request
/// head (a port scanner, a broken client, slowloris) is closed at `handshake_timeout` instead of holding a
/// descriptor for good. Nearest the socket; taken out once the head is complete (`passed(on:)`). After that,
/// Hummingbird's idle timeout bounds a connection between requests, and an agent's WebSocket has its heartbeats.
final class OpeningDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    static let name = "weir-opening-deadline"

    private let timeout: TimeAmount
    private let timedOut: Counter
    private var deadline = ChannelDeadline()

    init(timeout: TimeAmount, timedOut: Counter) {
        self.timeout = timeout
        self.timedOut = timedOut
    }

    /// The first request head of `channel` is complete: its opening is no longer bounded. Any thread.
    static func passed(on channel: any Channel) {
        channel.pipeline.removeHandler(name: name, promise: nil)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        deadline.arm(timeout, on: context) { [timedOut] in
            timedOut.increment()
            // Closed from here, nearest the socket: the TLS handler's close would first wait (5 s) for the
            // client's close_notify, which a client that stalls does not send either.
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { deadline.cancel() }

    func channelInactive(context: ChannelHandlerContext) {
        deadline.cancel()
        context.fireChannelInactive()
    }
}

/// Added after the HTTP decoder once a request head is complete (Hummingbird adds `additionalChannelHandlers`
/// then, for requests that are not a WebSocket upgrade): ends the connection's opening deadline. Passes
/// everything on.
final class OpeningCompleted: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func handlerAdded(context: ChannelHandlerContext) {
        OpeningDeadline.passed(on: context.channel)
    }
}

/// A server child channel whose connections are counted and have an opening deadline, around another (TLS,
/// then HTTP/1 with WebSocket upgrades). (Their number is bounded by the server: at `max_connections` it stops
/// accepting until one closes.)
struct DeadlinedChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value

    let base: Base
    let handshakeTimeout: TimeAmount
    let metrics: CoordinatorMetrics

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let metrics = self.metrics
        metrics.connectionsOpen.increment()
        channel.closeFuture.whenComplete { _ in metrics.connectionsOpen.decrement() }
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(
                OpeningDeadline(timeout: handshakeTimeout, timedOut: metrics.handshakeTimeouts), name: OpeningDeadline.name, position: .first)
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
