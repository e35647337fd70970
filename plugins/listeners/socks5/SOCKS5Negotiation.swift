import NIOCore
import NIOPosix
import NIOSOCKS
import WeirCore

/// One SOCKS5 client: method selection, optional RFC 1929 authentication, the CONNECT request, the reply.
/// NIOSOCKS' handshake handler does the framing; this handler decides. Reads are requested one at a time
/// (the accepted channel has autoRead off) until the request arrived.
final class SOCKS5Negotiation: ReadsUntilDecided, RemovableChannelHandler, StreamNegotiation, @unchecked Sendable {
    typealias InboundIn = ClientMessage
    typealias OutboundOut = ServerMessage

    private let credentials: ProxyCredentials?
    private let policy: DestinationPolicy
    private let handshake = SOCKSServerHandshakeHandler()
    private var authentication: ByteBuffer?
    private var destination: EventLoopPromise<Destination>?
    private var context: ChannelHandlerContext?
    private(set) var decided = false
    /// The UDP socket of an association, while its TCP connection is open.
    private var association: (any Channel)?

    /// For the bytes of UDP associations (TCP bytes are the glue's).
    private let metrics: PipelineMetrics

    init(credentials: ProxyCredentials?, policy: DestinationPolicy, metrics: PipelineMetrics) {
        self.credentials = credentials
        self.policy = policy
        self.metrics = metrics
    }

    // MARK: StreamNegotiation

    func begin(on channel: any Channel) -> EventLoopFuture<Destination> {
        let promise = channel.eventLoop.makePromise(of: Destination.self)
        destination = promise
        return install([handshake, self], on: channel, for: promise)
    }

    func succeed(target: any Channel) {
        guard let context else { return }
        let bound = target.localAddress.map(SOCKSAddress.address) ?? .domain("0.0.0.0", port: 0)
        context.writeAndFlush(wrapOutboundOut(.response(SOCKSResponse(reply: .succeeded, boundAddress: bound))), promise: nil)
        // This handler first, then the handshake handler, which hands on what the client sent meanwhile.
        context.pipeline.syncOperations.handOver(from: context, then: handshake)
    }

    func fail(_ reason: NegotiationFailure) {
        let reply: SOCKSServerReply =
            switch reason {
            case .notAllowed: .notAllowed
            case .unreachable: .refused
            case .unknownHost: .hostUnreachable
            }
        answerAndClose(reply)
    }

    // MARK: ChannelInboundHandler

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        readIfActive(context)
    }

    /// The context refers back to this handler: kept past removal, the two would keep each other (and the
    /// connection's buffers) alive after the connection closed.
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard association == nil else { return }
        switch unwrapInboundIn(data) {
        case .greeting(let greeting):
            let method: AuthenticationMethod = credentials == nil ? .noneRequired : .usernamePassword
            guard greeting.methods.contains(method) else {
                context.writeAndFlush(wrapOutboundOut(.selectedAuthenticationMethod(.init(method: .noneAcceptable))), promise: nil)
                refuse(context, SOCKSRefused(reason: "the client offers none of the methods this listener accepts"))
                return
            }
            context.writeAndFlush(wrapOutboundOut(.selectedAuthenticationMethod(.init(method: method))), promise: nil)
            parseAgain(context, adding: nil)
        case .authenticationData(var bytes):
            authentication.setOrWriteBuffer(&bytes)
            authenticate(context)
        case .request(let request):
            decide(context, request)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Until decided, and for as long as a UDP association lives on this connection.
        if !decided || association != nil { context.read() }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // The client half-closed the connection of a UDP association: the association is over.
        if association != nil, case ChannelEvent.inputClosed = event {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        refuse(context, error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        settle(ClientWentAway())
        context.fireChannelInactive()
        // Leave before the closing channel removes the handshake handler, which hands its leftover bytes
        // (raw, not a ClientMessage) to whatever follows it.
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    // MARK: Steps

    private func authenticate(_ context: ChannelHandlerContext) {
        guard let credentials, var bytes = authentication else { return }
        switch UsernamePasswordRequest.parse(&bytes) {
        case .incomplete:
            return
        case .malformed:
            refuse(context, SOCKSRefused(reason: "malformed username/password request"))
        case .credentials(let username, let password):
            let accepted = credentials.accepts(username: username, password: password)
            let reply = UsernamePasswordRequest.reply(accepted: accepted, allocator: context.channel.allocator)
            context.writeAndFlush(wrapOutboundOut(.authenticationData(reply, complete: accepted)), promise: nil)
            guard accepted else {
                refuse(context, SOCKSRefused(reason: "wrong user name or password for \"\(username)\""))
                return
            }
            // NIOSOCKS hands over everything after the greeting as authentication data: what follows the
            // credentials is the request, sent along with them.
            authentication = nil
            parseAgain(context, adding: bytes)
        }
    }

    /// NIOSOCKS' handshake handler parses one message per read and keeps the rest: a client that sent its
    /// next message along with the last (greeting and request in one segment, as optimistic clients do)
    /// would wait for a read that never comes, until the handshake timeout. Once an answer has moved its
    /// state machine on, the handler is handed `bytes` (or nothing) to parse what it holds. (Called
    /// re-entrantly from its own read: it has updated its buffer and state before handing a message on.)
    private func parseAgain(_ context: ChannelHandlerContext, adding bytes: ByteBuffer?) {
        guard !decided, let handshakeContext = try? context.pipeline.syncOperations.context(handler: handshake) else { return }
        handshake.channelRead(context: handshakeContext, data: NIOAny(bytes ?? context.channel.allocator.buffer(capacity: 0)))
    }

    private func decide(_ context: ChannelHandlerContext, _ request: SOCKSRequest) {
        decided = true
        if request.command == .udpAssociate {
            associate(context)
            return
        }
        guard request.command == .connect else {
            settle(SOCKSRefused(reason: "command \(request.command.value) is not supported"))
            answerAndClose(.commandUnsupported)
            return
        }
        let wanted: Destination
        switch request.addressType {
        case .domain(let host, let port):
            wanted = Destination(host: host, port: port)
        case .address(let address):
            guard let host = address.ipAddress, let port = address.port else {
                settle(SOCKSRefused(reason: "unsupported address"))
                answerAndClose(.addressUnsupported)
                return
            }
            wanted = Destination(host: host, port: port)
        }
        guard policy.permits(wanted) else {
            settle(SOCKSRefused(reason: "\(wanted) is not allowed"))
            answerAndClose(.notAllowed)
            return
        }
        destination?.succeed(wanted)
        destination = nil
    }

    /// UDP ASSOCIATE: a UDP socket on the listener's address relays the client's datagrams for as long as this
    /// TCP connection stays open. The forwarder hears that the listener took the connection over.
    private func associate(_ context: ChannelHandlerContext) {
        let channel = context.channel
        guard let local = channel.localAddress, let localHost = local.ipAddress, let clientHost = channel.remoteAddress?.ipAddress else {
            settle(SOCKSRefused(reason: "UDP ASSOCIATE without addresses"))
            answerAndClose(.serverFailure)
            return
        }
        let policy = self.policy, metrics = self.metrics
        DatagramBootstrap(group: channel.eventLoop)
            .channelInitializer { udp in
                udp.eventLoop.makeCompletedFuture {
                    try udp.pipeline.syncOperations.addHandler(SOCKS5UDPRelayHandler(clientHost: clientHost, policy: policy, metrics: metrics))
                }
            }
            .bind(host: localHost, port: 0)
            .assumeIsolated().whenComplete { result in
                switch result {
                case .success(let udp):
                    channel.closeFuture.whenComplete { _ in udp.close(promise: nil) }
                    let bound = udp.localAddress.map(SOCKSAddress.address) ?? .domain("0.0.0.0", port: 0)
                    context.writeAndFlush(self.wrapOutboundOut(.response(SOCKSResponse(reply: .succeeded, boundAddress: bound))), promise: nil)
                    self.destination?.fail(HandledByListener(what: "SOCKS5 UDP association"))
                    self.destination = nil
                    self.association = udp
                    // Reads go on, so the client's close (the end of the association) is noticed.
                    context.read()
                case .failure(let error):
                    self.settle(error)
                    self.answerAndClose(.serverFailure)
                }
            }
    }

    /// Ends a negotiation that failed before a request was accepted.
    private func refuse(_ context: ChannelHandlerContext, _ error: any Error) {
        settle(error)
        context.close(promise: nil)
    }

    /// Fails the negotiation once (a promise completes only once; later failures, such as the close that
    /// follows, are not news).
    private func settle(_ error: any Error) {
        decided = true
        destination?.fail(error)
        destination = nil
    }

    private func answerAndClose(_ reply: SOCKSServerReply) {
        guard let context else { return }
        let response = SOCKSResponse(reply: reply, boundAddress: .domain("0.0.0.0", port: 0))
        context.writeAndFlush(wrapOutboundOut(.response(response))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }
}

struct SOCKSRefused: Error, CustomStringConvertible {
    let reason: String
    var description: String { "SOCKS5: \(reason)" }
}
