// SOCK_DGRAM and SOCK_STREAM come through CWeirSystem (its header includes sys/socket.h) once this module uses
// its datagram calls.
import CWeirSystem
import NIOCore
import NIOPosix

/// Name resolution off the event loops: getaddrinfo blocks, so it runs on NIO's blocking thread pool.
public enum Resolver {
    /// Every address of `host` (or the literal itself), IPv6 and IPv4 in the order the system prefers.
    public static func resolveAll(host: String, port: Int, datagram: Bool, on eventLoop: any EventLoop) -> EventLoopFuture<[SocketAddress]> {
        if let literal = try? SocketAddress(ipAddress: host, port: port) {
            return eventLoop.makeSucceededFuture([literal])
        }
        return NIOThreadPool.singleton.runIfActive(eventLoop: eventLoop) {
            try getaddrinfo(host: host, port: port, datagram: datagram)
        }
    }

    public static func getaddrinfo(host: String, port: Int, datagram: Bool) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(datagram ? SOCK_DGRAM.rawValue : SOCK_STREAM.rawValue)
        var info: UnsafeMutablePointer<addrinfo>?
        let status = Glibc.getaddrinfo(host, String(port), &hints, &info)
        guard status == 0, let first = info else {
            throw ResolutionError(host: host, reason: String(cString: gai_strerror(status)))
        }
        defer { freeaddrinfo(first) }
        var addresses: [SocketAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let entry = cursor {
            if let raw = entry.pointee.ai_addr {
                switch Int32(entry.pointee.ai_family) {
                case AF_INET:
                    addresses.append(SocketAddress(raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }, host: host))
                case AF_INET6:
                    addresses.append(SocketAddress(raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }, host: host))
                default:
                    break
                }
            }
            cursor = entry.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw ResolutionError(host: host, reason: "no addresses") }
        return addresses
    }
}

public struct ResolutionError: Error, CustomStringConvertible {
    public let host: String
    public let reason: String

    public init(host: String, reason: String) {
        self.host = host
        self.reason = reason
    }

    public var description: String { "cannot resolve \(host): \(reason)" }
}

extension ClientBootstrap {
    /// Connects to a configured target: its address parsed once ahead when it is an IP literal, else the name
    /// through NIO's happy-eyeballs resolver.
    public func connect(to target: HostPort, literal: SocketAddress?) -> EventLoopFuture<any Channel> {
        literal.map { connect(to: $0) } ?? connect(host: target.host, port: target.port)
    }
}
