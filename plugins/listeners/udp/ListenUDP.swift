import NIOCore
import WeirCore

/// `listen.udp`: receives datagrams on one address; each client address becomes a session.
public struct ListenUDPConfig: ListenerConfig {
    public static let type = "listen.udp"
    public static let summary = "Receive UDP datagrams on an address; each client address is a session to the connector."
    public static let role = StageRole.listener(.datagram)
    public static let options = [
        OptionDoc("address", "ip:port", "Address to listen on, e.g. 0.0.0.0:5353 (required)."),
        OptionDoc(
            "receive_buffer", "integer", default: "4194304",
            "Receive buffer of each socket in bytes (SO_RCVBUF; beyond net.core.rmem_max only as root), for bursts of new clients."),
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

/// The runtime binds a socket per core on the address and relays its sessions (`DatagramRelayLoop`).
struct ListenUDP: DatagramListener {
    let config: ListenUDPConfig

    var address: BindAddress { config.bindAddress }
    var receiveBuffer: Int { config.receiveBuffer ?? DatagramSocket.defaultReceiveBuffer }
}
