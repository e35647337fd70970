import NIOCore
import NIOTLS
import WeirCore

/// One TLS client, not terminated: NIO's SNIHandler reads the ClientHello's server name, the routes pick the
/// target, and once it is connected the buffered ClientHello and everything after flow to it unchanged.
/// A name with no route (and no default) is closed: there is no way to answer in plain text.
final class TLSSNINegotiation: ReadsUntilDecided, RemovableChannelHandler, StreamNegotiation, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    private let routes: SNIRoutes
    private var destination: EventLoopPromise<Destination>?
    /// Completing it lets the SNI handler remove itself and hand on the ClientHello.
    private var release: EventLoopPromise<Void>?
    private var sni: ByteToMessageHandler<SNIHandler>?
    private var context: ChannelHandlerContext?
    private(set) var decided = false

    init(routes: SNIRoutes) {
        self.routes = routes
    }

    func begin(on channel: any Channel) -> EventLoopFuture<Destination> {
        let promise = channel.eventLoop.makePromise(of: Destination.self)
        destination = promise
        let release = channel.eventLoop.makePromise(of: Void.self)
        self.release = release
        let sni = ByteToMessageHandler(SNIHandler { [weak self] result in
            self?.route(result)
            return release.futureResult
        })
        self.sni = sni
        return install([sni, self], on: channel, for: promise)
    }

    func succeed(target: any Channel) {
        guard let context, let sni else { return }
        // This handler first, then the SNI handler, which hands on the ClientHello it kept. It is removed
        // here rather than by itself (on `release`), so the glue hears when the ClientHello is through.
        context.pipeline.syncOperations.handOver(from: context, then: sni)
        release?.fail(TLSSNIRefused(reason: "handed over"))
        release = nil
    }

    func fail(_ reason: NegotiationFailure) {
        context?.close(promise: nil)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        readIfActive(context)
    }

    /// The context refers back to this handler: kept past removal, the two would keep each other (and the
    /// connection's buffers) alive after the connection closed.
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelInactive(context: ChannelHandlerContext) {
        settle(ClientWentAway())
        release?.fail(TLSSNIRefused(reason: "closed"))
        release = nil
        context.fireChannelInactive()
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        settle(error)
        context.close(promise: nil)
    }

    private func route(_ result: SNIResult) {
        let name: String? =
            switch result {
            case .hostname(let name): name
            case .fallback: nil
            }
        decided = true
        guard let target = routes.target(for: name) else {
            settle(TLSSNIRefused(reason: name.map { "no route for server name \"\($0)\"" } ?? "no server name and no default"))
            context?.close(promise: nil)
            return
        }
        destination?.succeed(Destination(host: target.host, port: target.port))
        destination = nil
    }

    private func settle(_ error: any Error) {
        decided = true
        destination?.fail(error)
        destination = nil
    }
}

struct TLSSNIRefused: Error, CustomStringConvertible {
    let reason: String
    var description: String { "TLS SNI: \(reason)" }
}
