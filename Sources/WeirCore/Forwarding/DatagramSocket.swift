import CWeirSystem
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// A UDP socket bound for a thread that reads it without NIO (the UDP relay, dns.filter's answer loops): one of
/// several on the same address (SO_REUSEPORT — the kernel spreads clients over them and keeps each client on
/// one), with a receive buffer that holds a burst.
public enum DatagramSocket {
    /// Holds a burst of ~5,000 small datagrams (each takes about 800 bytes of buffer).
    public static let defaultReceiveBuffer = 4 << 20

    /// Binds a new socket to `address`; `receiveBuffer` goes in with SO_RCVBUFFORCE as root, else SO_RCVBUF
    /// (which the kernel caps at net.core.rmem_max). Throws NIO's IOError, naming the call that failed.
    public static func bind(_ address: SocketAddress, receiveBuffer: Int = defaultReceiveBuffer, nonBlocking: Bool = false) throws -> Int32 {
        let family = address.protocol.rawValue
        let flags = Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | (nonBlocking ? Int32(SOCK_NONBLOCK.rawValue) : 0)
        let fd = socket(family, flags, 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        var one: Int32 = 1, zero: Int32 = 0, buffer = Int32(clamping: receiveBuffer)
        let size = socklen_t(MemoryLayout<Int32>.size)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, size)
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, size) != 0 { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, size) }
        // [::] takes IPv4 clients too (as ::ffff:a.b.c.d), as NIO's sockets do.
        if family == AF_INET6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, size) }
        let bound = address.withSockAddr { pointer, length in Glibc.bind(fd, pointer, socklen_t(length)) }
        guard bound == 0 else {
            let code = errno
            Glibc.close(fd)
            throw IOError(errnoCode: code, reason: "bind")
        }
        return fd
    }

    /// Binds `count` sockets to `address`; with port 0 the others join the port the first was given.
    public static func bind(_ address: SocketAddress, count: Int, receiveBuffer: Int = defaultReceiveBuffer, nonBlocking: Bool = false) throws -> [Int32] {
        var address = address
        var sockets: [Int32] = []
        do {
            for _ in 0..<max(count, 1) {
                let fd = try bind(address, receiveBuffer: receiveBuffer, nonBlocking: nonBlocking)
                sockets.append(fd)
                if address.port == 0, let bound = localAddress(fd) { address = bound }
            }
        } catch {
            sockets.forEach { _ = Glibc.close($0) }
            throw error
        }
        return sockets
    }

    /// The address `fd` is bound to.
    public static func localAddress(_ fd: Int32) -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return status == 0 ? address(storage) : nil
    }

    /// A peer as NIO's SocketAddress (IPv4 or IPv6; nil for any other family).
    public static func address(_ storage: sockaddr_storage) -> SocketAddress? {
        var storage = storage
        return withUnsafePointer(to: &storage) { pointer in
            switch Int32(pointer.pointee.ss_family) {
            case AF_INET: pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { SocketAddress($0.pointee) }
            case AF_INET6: pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { SocketAddress($0.pointee) }
            default: nil
            }
        }
    }
}
