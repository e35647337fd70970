import Glibc
import WeirCore

/// A network interface of this host's (network namespace's) view, by name and index.
struct NetworkInterface: Hashable, Sendable {
    let name: String
    let index: Int32

    struct NotFound: Error, CustomStringConvertible {
        let name: String
        var description: String { "interface \"\(name)\" does not exist" }
    }

    static func named(_ name: String) throws(NotFound) -> NetworkInterface {
        let index = if_nametoindex(name)
        guard index != 0 else { throw NotFound(name: name) }
        return NetworkInterface(name: name, index: Int32(index))
    }

    /// Every interface, sorted by index.
    static func all() -> [NetworkInterface] {
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

    /// The interfaces that carry traffic to `address`: every interface for a wildcard address, else those
    /// that have the address assigned.
    static func carrying(_ address: BindAddress) -> [NetworkInterface] {
        guard let wanted = IPAddressBytes(address.host), !wanted.isUnspecified else { return all() }
        var names = Set<String>()
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return [] }
        defer { freeifaddrs(list) }
        var entry = list
        while let current = entry {
            if let socketAddress = current.pointee.ifa_addr, IPAddressBytes(socketAddress) == wanted {
                names.insert(String(cString: current.pointee.ifa_name))
            }
            entry = current.pointee.ifa_next
        }
        return all().filter { names.contains($0.name) }
    }
}

/// An IPv4 or IPv6 address as the eBPF program stores it: family 4 or 6, 16 bytes (IPv4 in the first 4).
struct IPAddressBytes: Hashable, Sendable {
    var family: UInt8
    var bytes: [UInt8]

    init?(_ text: String) {
        guard let address = IPNetwork.addressBytes(text) else { return nil }
        family = address.count == 4 ? 4 : 6
        bytes = address + [UInt8](repeating: 0, count: 16 - address.count)
    }

    init?(_ address: UnsafeMutablePointer<sockaddr>) {
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

    var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }
}
