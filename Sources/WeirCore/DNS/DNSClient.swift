import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A DNS client's address as plain bytes — no text, no allocation — for the per-query path: the filter keeps
/// one in every query ring event, and makes text only when the event is read. An IPv4 client of a socket on
/// [::] (::ffff:a.b.c.d) is kept as IPv4.
public struct DNSClient: Sendable, Hashable {
    /// The address in network order, IPv4 in the first 4 bytes.
    private var high: UInt64 = 0
    private var low: UInt64 = 0
    public private(set) var isIPv4 = true

    public init() {}

    /// From a received datagram's peer; nil for a family other than IPv4 and IPv6.
    public init?(_ storage: sockaddr_storage) {
        var storage = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            let address = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr } }
            self.init(ipv4: address)
        case AF_INET6:
            let address = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr } }
            self.init(ipv6: address)
        default:
            return nil
        }
    }

    /// From a connection's peer (TCP); nil for a Unix socket.
    public init?(_ address: SocketAddress) {
        switch address {
        case .v4(let v4): self.init(ipv4: v4.address.sin_addr)
        case .v6(let v6): self.init(ipv6: v6.address.sin6_addr)
        case .unixDomainSocket: return nil
        }
    }

    private init(ipv4 address: in_addr) {
        withUnsafeMutableBytes(of: &high) { target in withUnsafeBytes(of: address) { target.copyMemory(from: $0) } }
    }

    private init(ipv6 address: in6_addr) {
        let bytes = withUnsafeBytes(of: address) { Array($0) }
        // ::ffff:a.b.c.d: an IPv4 client of a dual-stack socket.
        if bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
            withUnsafeMutableBytes(of: &high) { $0.copyBytes(from: bytes[12..<16]) }
            return
        }
        isIPv4 = false
        withUnsafeMutableBytes(of: &high) { $0.copyBytes(from: bytes[0..<8]) }
        withUnsafeMutableBytes(of: &low) { $0.copyBytes(from: bytes[8..<16]) }
    }

    /// 4 or 16 bytes.
    public var bytes: [UInt8] {
        var all = withUnsafeBytes(of: high) { Array($0) } + withUnsafeBytes(of: low) { Array($0) }
        if isIPv4 { all.removeLast(12) }
        return all
    }

    public var network: IPNetwork { IPNetwork(bytes: bytes, prefix: isIPv4 ? 32 : 128) }

    public var text: String { network.description }
}
