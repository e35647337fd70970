import NIOCore
import NIOPosix
import WeirCore

/// `listen.udp`: receives datagrams on one address; each client address becomes a session.
public struct ListenUDPConfig: ListenerConfig {
    public static let type = "listen.udp"
    public static let summary = "Receive UDP datagrams on an address; each client address is a session to the connector."
    public static let role = StageRole.listener(.datagram)
    public static let options = [
        OptionDoc("address", "ip:port", "Address to listen on, e.g. 0.0.0.0:5353 (required)."),
        OptionDoc("receive_buffer", "integer", default: "kernel default", "SO_RCVBUF in bytes, for bursts."),
    ]
    public static var sample: String { String(decoding: PackageResources.listen_udp_sample_yaml, as: UTF8.self) }

    public let bindAddress: BindAddress
    public let receiveBuffer: Int?

    public static func decode(_ options: ConfigMapping) -> ListenUDPConfig? {
        let address = options.required("address")?.parsed(BindAddress.parse)
        let receiveBuffer = options.optional("receive_buffer", default: Int?.none) { $0.int(in: 4096...(1 << 30)).map { Optional($0) } }
        guard let address, let receiveBuffer else { return nil }
        return ListenUDPConfig(bindAddress: address, receiveBuffer: receiveBuffer)
    }

    public func makeStage(_ context: StageContext) -> any Stage { ListenUDP(config: self) }
}

struct ListenUDP: DatagramListener {
    let config: ListenUDPConfig

    func bind(
        group: any EventLoopGroup,
        initializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> any Channel {
        var bootstrap = DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65536))
            .channelOption(.maxMessagesPerRead, value: 16)
            .channelInitializer(initializer)
        if let size = config.receiveBuffer {
            bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(size))
        }
        return try await bootstrap.bind(to: config.bindAddress.socketAddress()).get()
    }
}
