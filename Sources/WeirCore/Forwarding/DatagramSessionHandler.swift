import NIOCore
import NIOPosix

/// The session table of a UDP listener: one connected socket towards the target per client address.
///
/// Replies from the target go back to that client from the listening socket. Sessions idle for longer than
/// the connector's `idle_timeout` are closed; a full table drops datagrams from new clients. Sessions keep
/// the forwarder they started with, like TCP connections keep theirs across a reload.
final class DatagramSessionHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    /// At most this many datagrams wait per session while its socket opens.
    static let pendingLimit = 64
    static let sweepInterval = TimeAmount.milliseconds(250)

    final class Session {
        let client: SocketAddress
        let forwarder: DatagramForwarder
        var target: (any Channel)?
        var pending: [ByteBuffer] = []
        var filters: [any DatagramSessionFilter] = []
        var lastActivity = NIODeadline.now()

        init(client: SocketAddress, forwarder: DatagramForwarder) {
            self.client = client
            self.forwarder = forwarder
        }

        func admit(bytes: Int, direction: TrafficDirection) -> Bool {
            filters.allSatisfy { $0.admit(bytes: bytes, direction: direction) }
        }
    }

    private let socket: ListenerSocket
    private var sessions: [SocketAddress: Session] = [:]
    private var sweep: RepeatedTask?

    init(socket: ListenerSocket) { self.socket = socket }

    func handlerAdded(context: ChannelHandlerContext) {
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        sweep = context.eventLoop.scheduleRepeatedTask(initialDelay: Self.sweepInterval, delay: Self.sweepInterval) { _ in
            loopBound.value.closeIdleSessions()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        sweep?.cancel()
        for session in sessions.values { session.target?.close(promise: nil) }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let session: Session
        if let existing = sessions[envelope.remoteAddress] {
            session = existing
        } else {
            guard case .datagram(let forwarder) = socket.currentOwner else { return }
            guard sessions.count < forwarder.connector.maxSessions else {
                forwarder.metrics.error(stage: forwarder.connectorType, reason: "session_limit")
                return
            }
            session = open(client: envelope.remoteAddress, forwarder: forwarder, listener: context.channel)
        }
        session.lastActivity = .now()
        let forwarder = session.forwarder
        guard session.admit(bytes: envelope.data.readableBytes, direction: .in) else { return }
        if let target = session.target {
            forwarder.metrics.bytesIn.increment(by: Int64(envelope.data.readableBytes))
            target.writeAndFlush(envelope.data, promise: nil)
        } else if session.pending.count < Self.pendingLimit {
            session.pending.append(envelope.data)
        }
    }

    private func open(client: SocketAddress, forwarder: DatagramForwarder, listener: any Channel) -> Session {
        let session = Session(client: client, forwarder: forwarder)
        let info = ConnectionInfo(pipeline: forwarder.pipeline, client: client, local: listener.localAddress, eventLoop: listener.eventLoop)
        session.filters = forwarder.sessionFilters(for: info)
        sessions[client] = session
        forwarder.metrics.connectionsTotal.increment()
        forwarder.metrics.connectionsActive.increment()

        let eventLoop = listener.eventLoop
        let boundSession = NIOLoopBound(session, eventLoop: eventLoop)
        let boundSelf = NIOLoopBound(self, eventLoop: eventLoop)
        let bootstrap = DatagramBootstrap(group: eventLoop).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    TargetReplyHandler(session: boundSession.value, listener: listener))
            }
        }
        forwarder.connector.openSession(info, bootstrap: bootstrap).hop(to: eventLoop).assumeIsolated().whenComplete { result in
            let session = boundSession.value
            switch result {
            case .success(let target):
                target.closeFuture.whenComplete { _ in boundSelf.value.remove(boundSession.value) }
                guard boundSelf.value.sessions[client] === session else {
                    target.close(promise: nil)
                    return
                }
                session.target = target
                for datagram in session.pending {
                    forwarder.metrics.bytesIn.increment(by: Int64(datagram.readableBytes))
                    target.write(datagram, promise: nil)
                }
                session.pending = []
                target.flush()
            case .failure(let error):
                forwarder.metrics.error(stage: forwarder.connectorType, reason: "connect_failed")
                forwarder.logger.warning("UDP session failed", metadata: ["pipeline": "\(forwarder.pipeline)", "error": "\(error)"])
                boundSelf.value.remove(session)
            }
        }
        return session
    }

    private func remove(_ session: Session) {
        guard sessions[session.client] === session else { return }
        sessions[session.client] = nil
        session.forwarder.metrics.connectionsActive.decrement()
    }

    private func closeIdleSessions() {
        let now = NIODeadline.now()
        for session in sessions.values where now - session.lastActivity >= session.forwarder.connector.idleTimeout {
            remove(session)
            session.target?.close(promise: nil)
        }
    }
}

/// Sends a target's replies back to the session's client through the listening socket.
final class TargetReplyHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let session: DatagramSessionHandler.Session
    private let listener: any Channel

    init(session: DatagramSessionHandler.Session, listener: any Channel) {
        self.session = session
        self.listener = listener
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let reply = unwrapInboundIn(data).data
        let forwarder = session.forwarder
        session.lastActivity = .now()
        guard session.admit(bytes: reply.readableBytes, direction: .out) else { return }
        forwarder.metrics.bytesOut.increment(by: Int64(reply.readableBytes))
        listener.writeAndFlush(AddressedEnvelope(remoteAddress: session.client, data: reply), promise: nil)
    }

    /// A connected UDP socket reports an ICMP port-unreachable as ECONNREFUSED: the target is down, so the
    /// session ends and the connector tries the next address for the client's next datagram.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let forwarder = session.forwarder
        forwarder.metrics.error(stage: forwarder.connectorType, reason: "target_unreachable")
        if let remote = context.channel.remoteAddress { forwarder.connector.targetUnreachable(remote) }
        context.close(promise: nil)
    }
}
