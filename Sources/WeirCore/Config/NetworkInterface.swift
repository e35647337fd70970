import Glibc

/// A network interface of this host's (network namespace's) view, by name and index.
public struct NetworkInterface: Hashable, Sendable {
    public let name: String
    public let index: Int32

    public struct NotFound: Error, CustomStringConvertible {
        public let name: String
        public init(name: String) { self.name = name }
        public var description: String { "interface \"\(name)\" does not exist" }
    }

    public static func named(_ name: String) throws(NotFound) -> NetworkInterface {
        let index = if_nametoindex(name)
        guard index != 0 else { throw NotFound(name: name) }
        return NetworkInterface(name: name, index: Int32(index))
    }

    /// Every interface, sorted by index.
    public static func all() -> [NetworkInterface] {
        guard let list = if_nameindex() else { return [] }
        defer { if_freenameindex(list) }
        var result: [NetworkInterface] = []
        var entry = list
        while entry.pointee.if_index != 0, let name = entry.pointee.if_name {
            result.append(NetworkInterface(name: String(cString: name), index: Int32(entry.pointee.if_index)))
            entry += 1
        }
        return result.sorted { $0.index < $1.index }
    }

    /// Every IPv4 and IPv6 address assigned to an interface, and whether that interface is a loopback.
    public static func assignedAddresses() -> [(name: String, address: IPAddressBytes, loopback: Bool)] {
        var result: [(name: String, address: IPAddressBytes, loopback: Bool)] = []
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var entry = list
        while let current = entry {
            if let socketAddress = current.pointee.ifa_addr, let address = IPAddressBytes(socketAddress) {
                result.append((String(cString: current.pointee.ifa_name), address, current.pointee.ifa_flags & UInt32(IFF_LOOPBACK) != 0))
            }
            entry = current.pointee.ifa_next
        }
        return result
    }

    /// The interfaces that carry traffic to `address`: every interface for a wildcard address, else those
    /// that have the address assigned.
    public static func carrying(_ address: BindAddress) -> [NetworkInterface] {
        guard let wanted = IPAddressBytes(address.host), !wanted.isUnspecified else { return all() }
        let names = Set(assignedAddresses().filter { $0.address == wanted }.map(\.name))
        return all().filter { names.contains($0.name) }
    }
}

/// An IPv4 or IPv6 address as the kernel stages store it: family 4 or 6, 16 bytes (IPv4 in the first 4).
public struct IPAddressBytes: Hashable, Sendable {
    public var family: UInt8
    public var bytes: [UInt8]

    public init?(_ text: String) {
        guard let address = IPNetwork.addressBytes(text) else { return nil }
        family = address.count == 4 ? 4 : 6
        bytes = address + [UInt8](repeating: 0, count: 16 - address.count)
    }

    public init?(_ address: UnsafeMutablePointer<sockaddr>) {
        switch Int32(address.pointee.sa_family) {
        case AF_INET:
            family = 4
            bytes = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { withUnsafeBytes(of: $0.pointee.sin_addr) { Array($0) } }
                + [UInt8](repeating: 0, count: 12)
        case AF_INET6:
            family = 6
            bytes = address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { withUnsafeBytes(of: $0.pointee.sin6_addr) { Array($0) } }
        default:
            return nil
        }
    }

    public var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }
}
