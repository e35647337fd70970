import NIOCore
import NIOHTTP1
import WeirCore

/// `listen.http`: an HTTP CONNECT proxy with optional basic authentication; the client's destination flows
/// on to the pipeline's connector.
public struct ListenHTTPConfig: ListenerConfig {
    public static let type = "listen.http"
    public static let summary = "Accept HTTP proxy clients (CONNECT, optional basic auth); each names its destination."
    public static let role = StageRole.listener(.stream)
    public static let providesDestination = true
    public static let options: [OptionDoc] = [
        OptionDoc("address", "ip:port", "Address to listen on, e.g. 127.0.0.1:3128 (required)."),
        OptionDoc("users", "{name: password}", default: "no authentication", secret: true, "Require Proxy-Authorization: Basic with one of these users (answered 407 otherwise)."),
    ] + ProxyListenerOptions.docs
    public static var sample: String { String(decoding: PackageResources.listen_http_sample_yaml, as: UTF8.self) }

    let proxy: ProxyListenerOptions
    public var bindAddress: BindAddress { proxy.address }
    public var connectionOptions: ConnectionOptions { proxy.connections }

    public static func decode(_ options: ConfigMapping) -> ListenHTTPConfig? {
        ProxyListenerOptions.decode(options).map(ListenHTTPConfig.init)
    }

    public func makeStage(_ context: StageContext) -> any Stage {
        let proxy = self.proxy
        return proxy.listener(type: Self.type) {
            HTTPConnectNegotiation(credentials: proxy.users, policy: proxy.destinations)
        }
    }
}
