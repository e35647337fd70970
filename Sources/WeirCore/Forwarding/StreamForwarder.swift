import Logging
import NIOCore
import NIOPosix

/// A connector's failure because a destination's name did not resolve (answered as "host unreachable").
public struct NameNotResolved: Error, CustomStringConvertible {
    public let name: String
    public init(name: String) { self.name = name }
    public var description: String { "\(name) did not resolve" }
}

/// Forwards each accepted stream connection of one pipeline: the listener's negotiation (when its clients name
/// their destination), then the connector, the filters and the glue.
public final class StreamForwarder: Sendable {
    public let pipeline: String
    private let filters: [any StreamFilter]
    private let connector: any StreamConnector
    private let connectorType: String
    /// The listener, when its clients negotiate their destination.
    private let negotiating: (any NegotiatingStreamListener)?
    private let metrics: PipelineMetrics
    public let tracker: ConnectionTracker
    private let logger: Logger

    public init(
        pipeline: String, filters: [any StreamFilter], connector: any StreamConnector, connectorType: String,
        negotiating: (any NegotiatingStreamListener)? = nil, metrics: PipelineMetrics, logger: Logger
    ) {
        self.pipeline = pipeline
        self.negotiating = negotiating
        self.filters = filters
        self.connector = connector
        self.connectorType = connectorType
        self.metrics = metrics
        self.tracker = ConnectionTracker()
        self.logger = logger
    }

    /// Takes over an accepted client channel (autoRead off). Returns at once; the connect runs on.
    public func accept(_ client: any Channel) {
        guard tracker.admit(client) else {
            client.close(promise: nil)
            return
        }
        let metrics = self.metrics
        metrics.connectionsTotal.increment()
        metrics.connectionsActive.increment()
        client.closeFuture.whenComplete { _ in metrics.connectionsActive.decrement() }

        let info = ConnectionInfo(pipeline: pipeline, client: client.remoteAddress, local: client.localAddress, eventLoop: client.eventLoop)
        // The negotiation is the listener's, else that of the last filter that reads a destination from its
        // stream. A filter's negotiation sits right behind that filter's own handlers (the address header is
        // part of the AEAD layer), so handlers of filters listed after it only see what follows the header.
        var negotiation = negotiating?.negotiation(for: info)
        var split = filters.count
        // Searched from the end, so only the negotiation that is used gets made.
        if negotiation == nil,
            let (index, found) = filters.indices.reversed().lazy.compactMap({ index in self.filters[index].negotiation(for: info).map { (index, $0) } }).first
        {
            negotiation = found
            split = index + 1
        }
        let outerHandlers = filters[..<split].flatMap { $0.acceptHandlers(for: info) }
        let innerHandlers = filters[split...].flatMap { $0.acceptHandlers(for: info) }
        guard addHandlers(outerHandlers, to: client) else { return }
        guard let negotiation else {
            connect(client: client, info: info, negotiation: nil)
            return
        }
        client.eventLoop.execute {
            let decided = negotiation.begin(on: client)
            guard self.addHandlers(innerHandlers, to: client) else { return }
            decided.whenComplete { result in
                switch result {
                case .success(let destination):
                    var info = info
                    info.destination = destination
                    self.connect(client: client, info: info, negotiation: negotiation)
                case .failure(let error as StageFailure):
                    // A transform under the negotiation failed (an AEAD stream that does not authenticate); its
                    // label counted it.
                    self.logger.debug("connection failed", metadata: ["pipeline": "\(self.pipeline)", "error": "\(error)"])
                case .failure(let error as HandledByListener):
                    self.logger.debug("connection taken over", metadata: ["pipeline": "\(self.pipeline)", "by": "\(error.what)"])
                case .failure(let error):
                    metrics.error(stage: "listener", reason: "negotiation_failed")
                    self.logger.debug("negotiation failed", metadata: ["pipeline": "\(self.pipeline)", "error": "\(error)"])
                }
            }
        }
    }

    /// Adds accept-time handlers; on failure the connection closes.
    private func addHandlers(_ handlers: [any ChannelHandler], to client: any Channel) -> Bool {
        guard !handlers.isEmpty else { return true }
        do {
            try client.pipeline.syncOperations.addHandlers(handlers)
            return true
        } catch {
            metrics.error(stage: "pipeline", reason: "setup_failed")
            client.close(promise: nil)
            return false
        }
    }

    private func connect(client: any Channel, info: ConnectionInfo, negotiation: (any StreamNegotiation)?) {
        let bootstrap = ClientBootstrap(group: client.eventLoop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.so_keepalive), value: 1)
        let metrics = self.metrics
        connector.connect(info, bootstrap: bootstrap).hop(to: client.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let target):
                self.join(client: client, target: target, info: info, negotiation: negotiation)
            case .failure(let error):
                metrics.error(stage: self.connectorType, reason: "connect_failed")
                self.logger.warning(
                    "connect failed",
                    metadata: [
                        "pipeline": "\(self.pipeline)", "client": "\(info.client.map { "\($0)" } ?? "?")",
                        "destination": "\(info.destination.map { "\($0)" } ?? "-")", "error": "\(error)",
                    ])
                if let negotiation {
                    negotiation.fail(error is NameNotResolved ? .unknownHost : .unreachable)
                } else {
                    client.close(promise: nil)
                }
            }
        }
    }

    private func join(client: any Channel, target: any Channel, info: ConnectionInfo, negotiation: (any StreamNegotiation)?) {
        client.eventLoop.preconditionInEventLoop()
        // The client may not be active yet (a loopback connect can finish before the accepted channel is
        // registered) or may already be gone; in the latter case this closes the target at once.
        client.closeFuture.whenComplete { _ in target.close(promise: nil) }
        let glue = GlueHandler.matchedPair(metrics: metrics)
        do {
            let handlers = filters.map { $0.handlers(for: info) }
            try client.pipeline.syncOperations.addHandlers(handlers.flatMap(\.clientSide))
            try client.pipeline.syncOperations.addHandler(glue.client)
            try target.pipeline.syncOperations.addHandlers(handlers.reversed().flatMap(\.targetSide))
            try target.pipeline.syncOperations.addHandler(glue.target)
        } catch {
            metrics.error(stage: "pipeline", reason: "setup_failed")
            client.close(promise: nil)
            target.close(promise: nil)
            return
        }
        // The client hears that the target answered; what it sent after its request flows into the glue.
        negotiation?.succeed(target: target)
        // Both channels were accepted or connected with autoRead off, so nothing was read before the glue
        // was in place. From here NIO reads after every read cycle, through the glue's (and filters')
        // `read` interception, which is where backpressure holds reads back.
        do {
            try client.syncOptions?.setOption(.autoRead, value: true)
            try target.syncOptions?.setOption(.autoRead, value: true)
        } catch {
            client.close(promise: nil)
            target.close(promise: nil)
        }
    }
}
