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
    public static let options: [OptionDoc] = [
        OptionDoc("address", "ip:port", "Address to listen on, e.g. 127.0.0.1:1080 (required)."),
        OptionDoc("users", "{name: password}", default: "no authentication", secret: true, "Require RFC 1929 username/password authentication."),
    ] + ProxyListenerOptions.docs
    public static var sample: String { String(decoding: PackageResources.listen_socks5_sample_yaml, as: UTF8.self) }

    let proxy: ProxyListenerOptions
    public var bindAddress: BindAddress { proxy.address }
    public var connectionOptions: ConnectionOptions { proxy.connections }

    public static func decode(_ options: ConfigMapping) -> ListenSOCKS5Config? {
        ProxyListenerOptions.decode(options).map(ListenSOCKS5Config.init)
    }

    public func makeStage(_ context: StageContext) -> any Stage {
        let proxy = self.proxy
        let metrics = context.metrics
        return proxy.listener(type: Self.type) {
            SOCKS5Negotiation(credentials: proxy.users, policy: proxy.destinations, metrics: metrics)
        }
    }
}
