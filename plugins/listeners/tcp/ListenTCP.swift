import NIOCore
import NIOPosix
import WeirCore

/// `listen.tcp`: accepts TCP connections on one address.
public struct ListenTCPConfig: ListenerConfig {
    public static let type = "listen.tcp"
    public static let summary = "Accept TCP connections on an address and forward each to the pipeline's connector."
    public static let role = StageRole.listener(.stream)
    public static let options = [
        OptionDoc("address", "ip:port", "Address to listen on, e.g. 0.0.0.0:8080 or [::]:8080 (required)."),
        OptionDoc("backlog", "integer", default: "1024", "Kernel queue of connections not yet accepted."),
    ] + ConnectionOptions.docs
    public static var sample: String { String(decoding: PackageResources.listen_tcp_sample_yaml, as: UTF8.self) }

    public let bindAddress: BindAddress
    public let backlog: Int
    public let connectionOptions: ConnectionOptions

    public static func decode(_ options: ConfigMapping) -> ListenTCPConfig? {
        let address = options.required("address")?.parsed(BindAddress.parse)
        let backlog = options.optional("backlog", default: 1024) { $0.int(in: 1...65535) }
        let connections = ConnectionOptions.decode(options)
        guard let address, let backlog, let connections else { return nil }
        return ListenTCPConfig(bindAddress: address, backlog: backlog, connectionOptions: connections)
    }

    public func makeStage(_ context: StageContext) -> any Stage { ListenTCP(config: self) }
}

struct ListenTCP: PlainStreamListener {
    let config: ListenTCPConfig
    var address: BindAddress { config.bindAddress }
    var backlog: Int { config.backlog }

    func bind(
        group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> any Channel {
        try await StreamSocket.bind(config.bindAddress, backlog: config.backlog, group: group, childInitializer: childInitializer)
    }
}
