import NIOCore
import NIOPosix
import WeirCore

// What the stream listeners of this family share: the listening socket, the negotiating listener, the proxy options.

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
            .childChannelOption(.recvAllocator, value: StreamForwarder.receiveAllocator)
            .childChannelInitializer(childInitializer)
            .bind(to: address.socketAddress())
            .get()
    }
}

/// A stream listener whose clients negotiate: binds like every stream listener, and makes one negotiation
/// per accepted connection.
struct NegotiatingListener: NegotiatingStreamListener {
    let address: BindAddress
    let backlog: Int
    let opening: OpeningStep
    let makeNegotiation: @Sendable () -> any StreamNegotiation

    init(type: String, address: BindAddress, backlog: Int, handshakeTimeout: Duration, makeNegotiation: @escaping @Sendable () -> any StreamNegotiation) {
        self.address = address
        self.backlog = backlog
        opening = OpeningStep(stage: type, timeout: TimeAmount(handshakeTimeout), completion: .negotiated)
        self.makeNegotiation = makeNegotiation
    }

    func bind(
        group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> any Channel {
        try await StreamSocket.bind(address, backlog: backlog, group: group, childInitializer: childInitializer)
    }

    func negotiation(for connection: ConnectionInfo) -> any StreamNegotiation { makeNegotiation() }
}

/// The options the proxy listeners (SOCKS5, HTTP CONNECT) share.
struct ProxyListenerOptions: Sendable {
    static let docs = [
        OptionDoc("backlog", "integer", default: "1024", "Kernel queue of connections not yet accepted."),
        OptionDoc("destinations", "{allow, deny}", default: "any", "Destinations clients may name: CIDRs and domain suffixes; deny wins."),
        ConnectionOptions.handshakeTimeoutDoc,
    ] + ConnectionOptions.docs

    let address: BindAddress
    let backlog: Int
    let users: ProxyCredentials?
    let destinations: DestinationPolicy
    let handshakeTimeout: Duration
    let connections: ConnectionOptions

    static func decode(_ options: ConfigMapping) -> ProxyListenerOptions? {
        let address = options.required("address")?.parsed(BindAddress.parse)
        let backlog = options.optional("backlog", default: 1024) { $0.int(in: 1...65535) }
        let users = options.optional("users").map(ProxyCredentials.read)
        let destinations = options.optional("destinations", default: DestinationPolicy.open) { DestinationPolicy.read($0) }
        let handshakeTimeout = ConnectionOptions.handshakeTimeout(options)
        let connections = ConnectionOptions.decode(options)
        guard let address, let backlog, let destinations, let handshakeTimeout, let connections else { return nil }
        if let users, users == nil { return nil }
        return ProxyListenerOptions(
            address: address, backlog: backlog, users: users ?? nil, destinations: destinations, handshakeTimeout: handshakeTimeout,
            connections: connections)
    }

    func listener(type: String, _ makeNegotiation: @escaping @Sendable () -> any StreamNegotiation) -> NegotiatingListener {
        NegotiatingListener(type: type, address: address, backlog: backlog, handshakeTimeout: handshakeTimeout, makeNegotiation: makeNegotiation)
    }
}
