import NIOCore
import NIOSOCKS
import WeirCore

/// `listen.socks5`: a SOCKS5 proxy (RFC 1928 CONNECT) with optional username/password authentication
/// (RFC 1929); the client's destination flows on to the pipeline's connector.
public struct ListenSOCKS5Config: ListenerConfig {
    public static let type = "listen.socks5"
    public static let summary = "Accept SOCKS5 clients (CONNECT, optional username/password); each names its destination."
    public static let role = StageRole.listener(.stream)
    public static let providesDestination = true
    public static let options = [
        OptionDoc("address", "ip:port", "Address to listen on, e.g. 127.0.0.1:1080 (required)."),
        OptionDoc("backlog", "integer", default: "1024", "Kernel queue of connections not yet accepted."),
        OptionDoc("users", "{name: password}", default: "no authentication", "Require RFC 1929 username/password authentication."),
        OptionDoc("destinations", "{allow, deny}", default: "any", "Destinations clients may name: CIDRs and domain suffixes; deny wins."),
    ]
    public static var sample: String { String(decoding: PackageResources.listen_socks5_sample_yaml, as: UTF8.self) }

    public let bindAddress: BindAddress
    public let backlog: Int
    public let users: ProxyCredentials?
    public let destinations: DestinationPolicy

    public static func decode(_ options: ConfigMapping) -> ListenSOCKS5Config? {
        let address = options.required("address")?.parsed(BindAddress.parse)
        let backlog = options.optional("backlog", default: 1024) { $0.int(in: 1...65535) }
        let usersValue = options.optional("users")
        let users = usersValue.map(ProxyCredentials.read)
        let destinations = options.optional("destinations", default: DestinationPolicy.open) { DestinationPolicy.read($0) }
        guard let address, let backlog, let destinations else { return nil }
        if let users, users == nil { return nil }
        return ListenSOCKS5Config(bindAddress: address, backlog: backlog, users: users ?? nil, destinations: destinations)
    }

    public func makeStage(_ context: StageContext) -> any Stage { ListenSOCKS5(config: self) }
}

struct ListenSOCKS5: NegotiatingStreamListener {
    let config: ListenSOCKS5Config

    func bind(
        group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> any Channel {
        try await StreamSocket.bind(config.bindAddress, backlog: config.backlog, group: group, childInitializer: childInitializer)
    }

    func negotiation(for connection: ConnectionInfo) -> any StreamNegotiation {
        SOCKS5Negotiation(credentials: config.users, policy: config.destinations)
    }
}
