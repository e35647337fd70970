import NIOCore
import WeirCore

/// `listen.tls_sni`: TLS passthrough routed by the server name of the ClientHello, without terminating TLS.
public struct ListenTLSSNIConfig: ListenerConfig {
    public static let type = "listen.tls_sni"
    public static let summary = "Accept TLS without terminating it; route each connection by its ClientHello's server name."
    public static let role = StageRole.listener(.stream)
    public static let providesDestination = true
    public static let options = [
        OptionDoc("address", "ip:port", "Address to listen on, e.g. 0.0.0.0:443 (required)."),
        OptionDoc("backlog", "integer", default: "1024", "Kernel queue of connections not yet accepted."),
        OptionDoc("routes", "{name: host:port}", "Server names to targets; \"*.example.com\" matches names under it (required)."),
        OptionDoc("default", "host:port", default: "close", "Target for names without a route and for clients that send none."),
        ConnectionOptions.handshakeTimeoutDoc,
    ] + ConnectionOptions.docs
    public static var sample: String { String(decoding: PackageResources.listen_tls_sni_sample_yaml, as: UTF8.self) }

    public let bindAddress: BindAddress
    public let backlog: Int
    let routes: SNIRoutes
    let handshakeTimeout: Duration
    public let connectionOptions: ConnectionOptions

    public static func decode(_ options: ConfigMapping) -> ListenTLSSNIConfig? {
        let address = options.required("address")?.parsed(BindAddress.parse)
        let backlog = options.optional("backlog", default: 1024) { $0.int(in: 1...65535) }
        let routes = options.required("routes").flatMap(SNIRoutes.read)
        let fallbackValue = options.optional("default")
        let fallback = fallbackValue.map { $0.parsed(HostPort.parse) }
        let handshakeTimeout = ConnectionOptions.handshakeTimeout(options)
        let connections = ConnectionOptions.decode(options)
        guard let address, let backlog, var routes, let handshakeTimeout, let connections else { return nil }
        if let fallback {
            guard let fallback else { return nil }
            routes.fallback = fallback
        }
        return ListenTLSSNIConfig(
            bindAddress: address, backlog: backlog, routes: routes, handshakeTimeout: handshakeTimeout, connectionOptions: connections)
    }

    public func makeStage(_ context: StageContext) -> any Stage {
        let routes = self.routes
        return NegotiatingListener(type: Self.type, address: bindAddress, backlog: backlog, handshakeTimeout: handshakeTimeout) {
            TLSSNINegotiation(routes: routes)
        }
    }
}
