import Hummingbird
import NIOCore

/// Hummingbird's basic context plus the client's address, which the audit trail and sign-in throttling need.
struct CoordinatorContext: RequestContext, RemoteAddressRequestContext {
    var coreContext: CoreRequestContextStorage
    let remoteAddress: SocketAddress?

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }

    /// The client's address as text ("" when unknown); an IPv4 client of a dual-stack socket as IPv4.
    var clientAddress: String {
        guard var text = remoteAddress?.ipAddress else { return "" }
        if text.hasPrefix("::ffff:"), text.contains(".") { text.removeFirst("::ffff:".count) }
        return text
    }
}
