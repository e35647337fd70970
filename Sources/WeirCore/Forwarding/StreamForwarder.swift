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
/// their destination), then the connector, the filters and the glue. With a multiplexing filter, client
/// connections become streams of a shared carrier (client side), or an accepted connection is a carrier
/// whose streams are forwarded like accepted connections (server side).
public final class StreamForwarder: Sendable {
    public let pipeline: String
    /// The filters that act on each connection (each stream, when multiplexed).
    private let filters: [any StreamFilter]
    /// With a multiplexing filter: it, and the filters that act once on its carrier.
    private let multiplexing: (filter: any StreamMultiplexingFilter, carrierFilters: [any StreamFilter])?
    private let connector: any StreamConnector
    let connectorType: String
    /// The listener, when its clients negotiate their destination.
    private let negotiating: (any NegotiatingStreamListener)?
    public let metrics: PipelineMetrics
    public let tracker: ConnectionTracker
    let logger: Logger
    /// The handshakes of the filters' accept sides (TLS, a WebSocket upgrade), per connection and per carrier:
    /// fixed by the configuration, so made once rather than for every connection.
    private let handshakeSteps: [OpeningStep]
    private let carrierHandshakeSteps: [OpeningStep]
    /// The listener's stage type and its `idle_timeout`.
    let listenerType: String
    private let idleTimeout: TimeAmount?
    let idleTimeoutNanoseconds: UInt64?
    /// Set when nothing between the listener and the connector looks at the bytes (at most it paces them) and
    /// the connector only connects to fixed addresses: a relay thread may then forward the connection on raw
    /// sockets.
    let direct: DirectTargets?
    /// The filters of a relayed forward: they only pace its bytes (limit.bandwidth).
    let pacing: [any PacingStreamFilter]
    /// "connect failed" warnings of this pipeline by destination, from its event loops and relay threads alike.
    private let connectFailureLog = KeyedLogThrottle(interval: 10_000_000_000, capacity: 256)

    public init(
        pipeline: String, filters: [any StreamFilter], connector: any StreamConnector, connectorType: String,
        negotiating: (any NegotiatingStreamListener)? = nil, listenerType: String = "listener", idleTimeout: Duration? = nil,
        metrics: PipelineMetrics, logger: Logger
    ) {
        self.pipeline = pipeline
        self.negotiating = negotiating
        self.listenerType = listenerType
        self.idleTimeout = idleTimeout.map(TimeAmount.init)
        idleTimeoutNanoseconds = idleTimeout.map { UInt64(max(TimeAmount($0).nanoseconds, 0)) }
        pacing = filters.compactMap { $0 as? any PacingStreamFilter }
        direct = pacing.count == filters.count && negotiating == nil ? connector.directTargets : nil
        if let index = filters.firstIndex(where: { $0 is any StreamMultiplexingFilter }),
            let filter = filters[index] as? any StreamMultiplexingFilter
        {
            let before = Array(filters[..<index]), after = Array(filters[(index + 1)...])
            switch filter.multiplexingSide {
            case .client:
                self.filters = before
                multiplexing = (filter, after)
            case .server:
                self.filters = after
                multiplexing = (filter, before)
            }
        } else {
            self.filters = filters
            multiplexing = nil
        }
        let reported = { (filters: [any StreamFilter]) in filters.compactMap(\.acceptOpening).filter { $0.completion == .reported } }
        handshakeSteps = reported(self.filters)
        carrierHandshakeSteps = reported(multiplexing?.carrierFilters ?? [])
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
        let info = ConnectionInfo(pipeline: pipeline, client: client.remoteAddress, local: client.localAddress, eventLoop: client.eventLoop)
        if let multiplexing, multiplexing.filter.multiplexingSide == .server {
            serve(carrier: client, info: info, multiplexing: multiplexing)
        } else {
            forward(client, info: info, listenerNegotiation: negotiating?.negotiation(for: info))
        }
    }

    /// An accepted carrier: its filters' accept handlers, then the multiplexer, which hands each stream back.
    private func serve(carrier: any Channel, info: ConnectionInfo, multiplexing: (filter: any StreamMultiplexingFilter, carrierFilters: [any StreamFilter])) {
        // The carrier's handshakes (TLS, a WebSocket upgrade) are its opening; its streams have none of their own.
        let opening = carrierHandshakeSteps.isEmpty ? [] : [OpeningGuard(steps: carrierHandshakeSteps, metrics: metrics)]
        guard addHandlers(opening + multiplexing.carrierFilters.flatMap { $0.acceptHandlers(for: info) }, to: carrier) else { return }
        do {
            try multiplexing.filter.serve(carrier: carrier) { stream, destination in
                var info = ConnectionInfo(pipeline: self.pipeline, client: info.client, local: info.local, eventLoop: stream.eventLoop)
                info.destination = destination
                self.forward(stream, info: info, listenerNegotiation: nil)
            }
        } catch {
            metrics.error(stage: "pipeline", reason: "setup_failed")
            carrier.close(promise: nil)
        }
    }

    /// Forwards one client connection or stream: negotiation, connect, glue.
    private func forward(_ client: any Channel, info: ConnectionInfo, listenerNegotiation: (any StreamNegotiation)?) {
        let metrics = self.metrics
        metrics.connectionsTotal.increment()
        metrics.connectionsActive.increment()
        client.closeFuture.whenComplete { _ in metrics.connectionsActive.decrement() }

        // The negotiation is the listener's, else that of the last filter that reads a destination from its
        // stream. A filter's negotiation sits right behind that filter's own handlers (the address header is
        // part of the AEAD layer), so handlers of filters listed after it only see what follows the header.
        var negotiation = listenerNegotiation
        var negotiationStep = listenerNegotiation == nil ? nil : negotiating?.opening
        var split = filters.count
        // Searched from the end, so only the negotiation that is used gets made.
        if negotiation == nil,
            let (index, found) = filters.indices.reversed().lazy.compactMap({ index in self.filters[index].negotiation(for: info).map { (index, $0) } }).first
        {
            negotiation = found
            negotiationStep = filters[index].acceptOpening
            split = index + 1
        }
        let outerHandlers = filters[..<split].flatMap { $0.acceptHandlers(for: info) }
        let innerHandlers = filters[split...].flatMap { $0.acceptHandlers(for: info) }
        // What the client must complete before data flows; bounded by the guard nearest the socket.
        let steps = (negotiationStep.map { [$0] } ?? []) + handshakeSteps
        let opening = steps.isEmpty ? nil : OpeningGuard(steps: steps, metrics: metrics)
        let outer = (opening.map { [$0] } ?? []) + outerHandlers
        // Last on the channel until the glue comes: keeps what is read before (see EarlyInputHold).
        let hold = EarlyInputHold()
        guard let negotiation else {
            guard addHandlers(outer + [hold], to: client) else { return }
            connect(client: client, info: info, negotiation: nil, hold: hold)
            return
        }
        guard addHandlers(outer, to: client) else { return }
        client.eventLoop.execute {
            let decided = negotiation.begin(on: client)
            guard self.addHandlers(innerHandlers + [hold], to: client) else { return }
            decided.whenComplete { result in
                switch result {
                case .success(let destination):
                    if let opening, let negotiationStep { opening.completed(stage: negotiationStep.stage) }
                    var info = info
                    info.destination = destination
                    self.connect(client: client, info: info, negotiation: negotiation, hold: hold)
                case .failure where opening?.closedTheConnection == true:
                    // The guard closed it (timeout, or the client left mid-opening) and counted why.
                    break
                case .failure(let error as StageFailure):
                    // A transform under the negotiation failed (an AEAD stream that does not authenticate); its
                    // label counted it.
                    self.logger.debug("connection failed", metadata: [
                        "pipeline": "\(self.pipeline)", "stage": "\(error.stage)", "reason": "\(error.reason)", "client": "\(Self.describe(info.client))",
                        "error": "\(error.underlying)",
                    ])
                case .failure(is ClientWentAway):
                    // Gone before the guard saw it go: a reset that failed the listener's answer, say.
                    metrics.error(stage: self.listenerType, reason: "closed_during_handshake")
                    self.logger.debug("connection closed during its opening", metadata: [
                        "pipeline": "\(self.pipeline)", "stage": "\(self.listenerType)", "reason": "closed_during_handshake",
                        "client": "\(Self.describe(info.client))",
                    ])
                case .failure(let error as HandledByListener):
                    self.logger.debug("connection taken over", metadata: ["pipeline": "\(self.pipeline)", "by": "\(error.what)"])
                case .failure(let error):
                    metrics.error(stage: self.listenerType, reason: "negotiation_failed")
                    self.logger.debug("negotiation failed", metadata: [
                        "pipeline": "\(self.pipeline)", "stage": "\(self.listenerType)", "reason": "negotiation_failed",
                        "client": "\(Self.describe(info.client))", "error": "\(error)",
                    ])
                }
            }
        }
    }

    /// Logs a connection whose connect failed (counted by the caller): per destination the first as a warning
    /// at once, then at most one warning per 10 s with how many were held back meanwhile, the others at debug.
    /// A target that is down meets every client of a busy listener — thousands of lines a second, one per
    /// client — while `weir_pipeline_errors_total{reason="connect_failed"}` has the exact count.
    func logConnectFailed(client: @autoclosure () -> String, destination: String, error: @autoclosure () -> String) {
        let heldBack = connectFailureLog.admit(destination, now: NIODeadline.now().uptimeNanoseconds).heldBack
        let level: Logger.Level = heldBack == nil ? .debug : .warning
        guard logger.logLevel <= level else { return }
        var metadata: Logger.Metadata = [
            "pipeline": "\(pipeline)", "stage": "\(connectorType)", "reason": "connect_failed",
            "client": "\(client())", "destination": "\(destination)", "error": "\(error())",
        ]
        if let heldBack, heldBack > 0 { metadata["held_back"] = "\(heldBack)" }
        logger.log(level: level, "connect failed", metadata: metadata)
    }

    /// A client address for log lines: "203.0.113.5:40112", or "?" when unknown.
    static func describe(_ address: SocketAddress?) -> String {
        guard let address, let ip = address.ipAddress, let port = address.port else { return "?" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
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

    private func bootstrap(on eventLoop: any EventLoop) -> ClientBootstrap {
        ClientBootstrap(group: eventLoop)
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelOption(.recvAllocator, value: Self.receiveAllocator)
    }

    /// Every forwarded stream socket's receive buffers: they start at 512 bytes and double with each read that
    /// fills them, up to 64 KiB, so a bulk transfer reaches full-size reads within a few reads while an idle
    /// connection keeps 512 bytes, not NIO's default 2 KiB, per socket (NIO keeps the last buffer for reuse).
    public static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536)

    /// The target side of one connection: a connection from the connector, or a stream of a carrier.
    private func openTarget(_ info: ConnectionInfo) -> EventLoopFuture<any Channel> {
        guard let multiplexing, multiplexing.filter.multiplexingSide == .client else {
            return connector.connect(info, bootstrap: bootstrap(on: info.eventLoop))
        }
        return multiplexing.filter.openStream(for: info) { eventLoop in
            // The carrier belongs to no client connection; its filters see none.
            let carrierInfo = ConnectionInfo(pipeline: self.pipeline, client: nil, local: nil, eventLoop: eventLoop)
            // A carrier's end of input is its end: HTTP/2 has no use for a half-closed connection.
            let bootstrap = self.bootstrap(on: eventLoop).channelOption(.allowRemoteHalfClosure, value: false)
            return self.connector.connect(carrierInfo, bootstrap: bootstrap).flatMap { carrier in
                // A connector may hand over a connection of another loop (connect.reverse's tunnels).
                carrier.eventLoop.submit {
                    var carrierInfo = carrierInfo
                    carrierInfo.eventLoop = carrier.eventLoop
                    let handlers = multiplexing.carrierFilters.reversed().flatMap { $0.handlers(for: carrierInfo).targetSide }
                    do {
                        try carrier.pipeline.syncOperations.addHandlers(handlers)
                    } catch {
                        carrier.close(promise: nil)
                        throw error
                    }
                    return carrier
                }
            }
        }
    }

    private func connect(client: any Channel, info: ConnectionInfo, negotiation: (any StreamNegotiation)?, hold: EarlyInputHold) {
        let metrics = self.metrics
        openTarget(info).hop(to: client.eventLoop).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let target):
                self.join(client: client, target: target, info: info, negotiation: negotiation, hold: hold)
            case .failure(let error):
                metrics.error(stage: self.connectorType, reason: "connect_failed")
                self.logConnectFailed(
                    client: Self.describe(info.client), destination: info.destination.map { "\($0)" } ?? "-", error: "\(error)")
                if let negotiation {
                    negotiation.fail(error is NameNotResolved ? .unknownHost : .unreachable)
                } else {
                    client.close(promise: nil)
                }
            }
        }
    }

    private func join(
        client: any Channel, target: any Channel, info: ConnectionInfo, negotiation: (any StreamNegotiation)?, hold: EarlyInputHold
    ) {
        client.eventLoop.preconditionInEventLoop()
        // The client may not be active yet (a loopback connect can finish before the accepted channel is
        // registered) or may already be gone; in the latter case this closes the target at once.
        client.closeFuture.whenComplete { _ in target.close(promise: nil) }
        // Counted per destination when the client named one (the name as asked, not what it resolved to).
        let destination = info.destination.map { metrics.destinationOpened($0.host) }
        if let destination {
            let metrics = self.metrics
            client.closeFuture.whenComplete { _ in metrics.destinationClosed(destination) }
        }
        let glue = GlueHandler.matchedPair(client: client, target: target, metrics: metrics, destination: destination)
        let handlers = filters.map { $0.handlers(for: info) }
        let targetHandlers = handlers.reversed().flatMap(\.targetSide) + [glue.target]
        do {
            try client.pipeline.syncOperations.addHandlers(handlers.flatMap(\.clientSide))
            try client.pipeline.syncOperations.addHandler(glue.client)
        } catch {
            setupFailed(client: client, target: target)
            return
        }
        // The target's handlers are added on its loop: at once when it is the client's, else (a stream of a
        // carrier on another loop) there, and only then does the client hear about it. A target that went
        // inactive before its glue was in place (a stream whose carrier just failed) told nobody: that counts
        // as a failed setup, so the client does not wait on it.
        let handOver = UnsafeHandOver(targetHandlers)
        let installTarget: @Sendable () throws -> Void = {
            try target.pipeline.syncOperations.addHandlers(handOver.value)
            guard target.isActive else { throw ChannelError.ioOnClosedChannel }
        }
        let installed = { (result: Result<Void, any Error>) in
            switch result {
            case .success: self.start(client: client, target: target, negotiation: negotiation, hold: hold)
            case .failure: self.setupFailed(client: client, target: target)
            }
        }
        if target.eventLoop === client.eventLoop {
            installed(Result { try installTarget() })
        } else {
            target.eventLoop.submit(installTarget).hop(to: client.eventLoop).assumeIsolated().whenComplete(installed)
        }
    }

    private func setupFailed(client: any Channel, target: any Channel) {
        metrics.error(stage: "pipeline", reason: "setup_failed")
        client.close(promise: nil)
        target.close(promise: nil)
    }

    /// The glue is in place on both channels: answer the client, then let bytes flow.
    private func start(client: any Channel, target: any Channel, negotiation: (any StreamNegotiation)?, hold: EarlyInputHold) {
        // The client hears that the target answered; what it sent after its request flows into the glue,
        // and then its end of input if that was read already.
        negotiation?.succeed(target: target)
        hold.release()
        // Both channels were accepted or connected with autoRead off, so nothing was read before the glue
        // was in place except what EarlyInputHold kept. From here NIO reads after every read cycle, through
        // the glue's (and filters') `read` interception, which is where backpressure holds reads back. The
        // target starts after the answer above, so nothing it sends can overtake it.
        // StartReading is for HTTP/2 streams, which do not start reading when autoRead is switched on; a
        // socket ignores it. (A plain read() would not do: a socket accepted but not registered yet takes it
        // as the read it does on registration, and never reads.)
        do {
            if let idleTimeout {
                try client.pipeline.syncOperations.addHandler(
                    IdleTimeout(timeout: idleTimeout, stage: listenerType, metrics: metrics), position: .first)
            }
            try client.syncOptions?.setOption(.autoRead, value: true)
            client.triggerUserOutboundEvent(StartReading(), promise: nil)
        } catch {
            client.close(promise: nil)
            target.close(promise: nil)
        }
        target.setOption(.autoRead, value: true).whenComplete { result in
            switch result {
            case .success: target.triggerUserOutboundEvent(StartReading(), promise: nil)
            case .failure:
                client.close(promise: nil)
                target.close(promise: nil)
            }
        }
    }
}

/// Handlers made on one loop for a channel on another: they are handed over once and touched only there.
private struct UnsafeHandOver<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
