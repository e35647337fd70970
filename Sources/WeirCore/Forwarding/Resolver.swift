// SOCK_DGRAM and SOCK_STREAM come through CWeirSystem (its header includes sys/socket.h) once this module uses
// its datagram calls.
import CWeirSystem
import NIOCore
import NIOConcurrencyHelpers
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

/// Lookups of a connector's target names, shared for a few seconds: a burst of new sessions costs one
/// getaddrinfo per name (a task on NIO's blocking pool each) instead of one per session, and sessions that
/// arrive while a lookup runs wait for that one. A changed record is followed once the answer is older than
/// `lifetime`; a failed lookup is not kept (the next session asks again). Entries are one per configured name.
public final class SharedLookups: Sendable {
    public typealias Lookup = @Sendable (_ host: String, _ port: Int, _ on: any EventLoop) -> EventLoopFuture<[SocketAddress]>

    private enum Entry {
        case resolved([SocketAddress], until: NIODeadline)
        case resolving(EventLoopFuture<[SocketAddress]>)
    }

    private let entries = NIOLockedValueBox<[String: Entry]>([:])
    private let lifetime: TimeAmount
    private let lookup: Lookup

    public init(lifetime: TimeAmount = .seconds(5), lookup: @escaping Lookup) {
        self.lifetime = lifetime
        self.lookup = lookup
    }

    /// The addresses of `host`, on `eventLoop`.
    public func addresses(host: String, port: Int, on eventLoop: any EventLoop) -> EventLoopFuture<[SocketAddress]> {
        enum Action {
            case known([SocketAddress])
            case join(EventLoopFuture<[SocketAddress]>)
            case start(EventLoopPromise<[SocketAddress]>)
        }
        let key = "\(host) \(port)"
        let now = NIODeadline.now()
        let action = entries.withLockedValue { entries -> Action in
            switch entries[key] {
            case .resolved(let addresses, let until) where until > now: return .known(addresses)
            case .resolving(let pending): return .join(pending)
            default:
                let promise = eventLoop.makePromise(of: [SocketAddress].self)
                entries[key] = .resolving(promise.futureResult)
                return .start(promise)
            }
        }
        switch action {
        case .known(let addresses): return eventLoop.makeSucceededFuture(addresses)
        case .join(let pending): return pending.hop(to: eventLoop)
        case .start(let promise):
            let lifetime = self.lifetime
            lookup(host, port, eventLoop).whenComplete { [entries] result in
                entries.withLockedValue { entries in
                    if case .success(let addresses) = result {
                        entries[key] = .resolved(addresses, until: .now() + lifetime)
                    } else {
                        entries[key] = nil
                    }
                }
                promise.completeWith(result)
            }
            return promise.futureResult
        }
    }
}
