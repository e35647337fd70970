import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Blocking POSIX sockets for driving the agent from tests, with timeouts so a broken agent fails a test
/// instead of hanging it.
struct SocketError: Error, CustomStringConvertible {
    let description: String
    let code: Int32
    init(_ what: String) {
        code = errno
        description = "\(what): \(String(cString: strerror(code)))"
    }
}

final class TCPClient: @unchecked Sendable {
    let fd: Int32

    /// Connects to 127.0.0.1:`port` (or [::1] when `ipv6`).
    init(port: Int, ipv6: Bool = false, timeout: TimeInterval = 10) throws {
        fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SocketError("socket") }
        setTimeout(timeout)
        let result = withLoopbackAddress(port: port, ipv6: ipv6) { connect(fd, $0, $1) }
        guard result == 0 else {
            let error = SocketError("connect to port \(port)")
            close(fd)
            throw error
        }
    }

    init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    func setTimeout(_ seconds: TimeInterval) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if sent < 0, errno == EINTR { continue }
            guard sent > 0 else { throw SocketError("send of \(bytes.count - offset) more bytes") }
            offset += sent
        }
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Up to `max` bytes; empty at end of stream.
    func receive(max: Int = 65536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        var count = -1
        repeat { count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, max, 0) } } while count < 0 && errno == EINTR
        guard count >= 0 else { throw SocketError("recv") }
        return Array(buffer.prefix(count))
    }

    /// Reads until end of stream.
    func receiveAll() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let chunk = try receive()
            if chunk.isEmpty { return all }
            all += chunk
        }
    }

    /// Reads until the peer closes, by FIN or by RST. A peer that closes a socket holding bytes it never
    /// read (a refused connection whose client already sent something) resets it: that is a close too.
    func receiveUntilClosed() throws -> [UInt8] {
        var all: [UInt8] = []
        while true {
            let chunk: [UInt8]
            do { chunk = try receive() } catch let error as SocketError where error.code == ECONNRESET { return all }
            if chunk.isEmpty { return all }
            all += chunk
        }
    }

    /// Reads exactly `count` bytes (fewer only at end of stream).
    func receive(exactly count: Int) throws -> [UInt8] {
        var all: [UInt8] = []
        while all.count < count {
            let chunk = try receive(max: min(65536, count - all.count))
            if chunk.isEmpty { break }
            all += chunk
        }
        return all
    }

    func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Makes the close (when this client is released) a reset instead of a FIN.
    func resetOnClose() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
    }
}

/// A listening TCP socket on loopback.
final class TCPListener: @unchecked Sendable {
    let fd: Int32
    let port: Int

    /// `host`: another loopback address than 127.0.0.1 (127.0.0.0/8 is all loopback).
    init(port: Int = 0, host: String = "127.0.0.1") throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard withLoopbackAddress(port: port, ipv6: false, host: host, { bind(fd, $0, $1) }) == 0, listen(fd, 128) == 0 else {
            let error = SocketError("bind/listen")
            close(fd)
            throw error
        }
        self.fd = fd
        self.port = boundPort(fd)
    }

    deinit { close(fd) }

    func accept(timeout: TimeInterval = 10) throws -> TCPClient {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { throw SocketError("accept timed out") }
        let client = Glibc.accept(fd, nil, nil)
        guard client >= 0 else { throw SocketError("accept") }
        let connection = TCPClient(fd: client)
        connection.setTimeout(timeout)
        return connection
    }

    /// Serves every connection on its own thread until the listener is closed.
    func serve(_ handler: @escaping @Sendable (TCPClient) -> Void) {
        let thread = Thread { [self] in
            while true {
                let client = Glibc.accept(fd, nil, nil)
                if client < 0 { return }
                let connection = TCPClient(fd: client)
                connection.setTimeout(30)
                Thread { handler(connection) }.start()
            }
        }
        thread.start()
    }

    func shutdownListener() { shutdown(fd, Int32(SHUT_RDWR)) }
}

/// A UDP socket on loopback.
final class UDPSocket: @unchecked Sendable {
    let fd: Int32
    let port: Int

    init(port: Int = 0, timeout: TimeInterval = 5) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard withLoopbackAddress(port: port, ipv6: false, { bind(fd, $0, $1) }) == 0 else {
            let error = SocketError("bind udp")
            close(fd)
            throw error
        }
        self.fd = fd
        self.port = boundPort(fd)
        var tv = timeval(tv_sec: Int(timeout), tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8], to port: Int) throws {
        let sent = withLoopbackAddress(port: port, ipv6: false) { address, length in
            bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, address, length) }
        }
        guard sent == bytes.count else { throw SocketError("sendto") }
    }

    /// Sends `bytes` to `port` until they come back (a forward that passes over a dead target answers a later
    /// try), at most `attempts` times.
    func echoed(_ bytes: [UInt8], through port: Int, attempts: Int) throws -> Bool {
        for _ in 0..<attempts {
            try send(bytes, to: port)
            if receive()?.bytes == bytes { return true }
        }
        return false
    }

    /// One datagram and the sender's port; nil on timeout.
    func receive() -> (bytes: [UInt8], port: Int)? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = buffer.withUnsafeMutableBytes { raw in
            withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, 65536, 0, $0, &length) }
            }
        }
        guard count >= 0 else { return nil }
        return (Array(buffer.prefix(count)), Int(UInt16(bigEndian: address.sin_port)))
    }
}

/// A free loopback TCP (and, most likely, UDP) port, for a server the test configures.
///
/// Never one the kernel hands out itself (outside `ip_local_port_range`): a client's socket bound to port 0 can
/// be given a port that a server is listening on — dig sets SO_REUSEPORT, and as the same user as an agent
/// whose listeners set it too, the kernel counts the agent's port as free for it. Such a dig sends its query to
/// itself and reads it back as an empty NOERROR answer (the dns.filter prefetch test failed so once in CI).
/// Handed out in turn from a random start, so two ports asked for before either is bound never coincide.
func freePort() -> Int {
    while true {
        let port = ServerPorts.next()
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let bound = withLoopbackAddress(port: port, ipv6: false) { bind(fd, $0, $1) }
        close(fd)
        if bound == 0 { return port }
    }
}

/// A loopback port free for TCP and for UDP at the moment of asking (a DNS server binds both; freePort
/// checks only TCP, and a UDP socket of another process may hold the same number).
func freeDualPort() -> Int {
    while true {
        let port = freePort()
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        let bound = withLoopbackAddress(port: port, ipv6: false) { bind(fd, $0, $1) }
        close(fd)
        if bound == 0 { return port }
    }
}

/// The ports tests give their servers: the larger of the stretches below and above the kernel's ephemeral
/// range (Debian: 16384–32767 below 32768–60999), walked in turn.
enum ServerPorts {
    static let range: Range<Int> = {
        var ephemeral = 32768...60999
        if let text = try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8) {
            let bounds = text.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
            if bounds.count == 2, bounds[0] <= bounds[1] { ephemeral = bounds[0]...bounds[1] }
        }
        let below = max(1024, ephemeral.lowerBound - 16384)..<max(1024, ephemeral.lowerBound)
        let above = min(65536, ephemeral.upperBound + 1)..<65536
        return below.count >= above.count ? below : above
    }()
    private static let cursor = Mutex(Int.random(in: 0..<range.count))

    static func next() -> Int {
        cursor.withLock { cursor in
            cursor = (cursor + 1) % range.count
            return range.lowerBound + cursor
        }
    }
}

func boundPort(_ fd: Int32) -> Int {
    var address = sockaddr_storage()
    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
    }
}

func withLoopbackAddress<T>(port: Int, ipv6: Bool, host: String = "127.0.0.1", _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
    if ipv6 {
        var address = sockaddr_in6()
        address.sin6_family = sa_family_t(AF_INET6)
        address.sin6_port = in_port_t(UInt16(port).bigEndian)
        address.sin6_addr = in6addr_loopback
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr(host)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
}

/// Deterministic pseudo-random bytes, so both ends can check a transfer without keeping a copy. The
/// sequence does not depend on how it is split into chunks.
struct ByteStream {
    private var state: UInt64
    private var word: UInt64 = 0
    private var left = 0

    init(seed: UInt64) { state = seed | 1 }

    mutating func next(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        for index in 0..<count {
            if left == 0 {
                state ^= state << 13
                state ^= state >> 7
                state ^= state << 17
                word = state
                left = 8
            }
            out[index] = UInt8(truncatingIfNeeded: word)
            word >>= 8
            left -= 1
        }
        return out
    }
}
