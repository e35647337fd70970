import Foundation

/// Seconds on the monotonic clock, for measuring rates.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// What a backend saw, filled in from its own threads.
final class BackendLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _received: [Int] = []
    private var _matched: [Bool] = []
    /// Monotonic seconds (`monotonicSeconds()`): a wall clock stepped by time synchronisation mid-transfer
    /// would skew a measured rate.
    private var _windows: [(first: Double, last: Double)] = []

    func record(received: Int, matched: Bool, first: Double = monotonicSeconds(), last: Double = monotonicSeconds()) {
        lock.lock()
        defer { lock.unlock() }
        _received.append(received)
        _matched.append(matched)
        _windows.append((first, last))
    }

    /// Bytes per second over the connections that began after `start` (when the senders began), from `start`
    /// to the last byte of any.
    /// Timed from the senders' start, not the backend's first read: a backend that got to read late on a busy
    /// machine (socket buffers filling meanwhile) would make the rate look higher than it was.
    func receiveRate(since start: Double) -> Double {
        lock.lock()
        defer { lock.unlock() }
        let since = _windows.indices.filter { _windows[$0].first >= start }
        guard let last = since.map({ _windows[$0].last }).max(), last > start else { return 0 }
        return Double(since.map { _received[$0] }.reduce(0, +)) / (last - start)
    }

    var received: [Int] { lock.lock(); defer { lock.unlock() }; return _received }
    var matched: [Bool] { lock.lock(); defer { lock.unlock() }; return _matched }
}

enum Backends {
    /// Reads until end of stream checking the bytes against `ByteStream(seed: expectSeed)`, then answers
    /// with `replyBytes` of `ByteStream(seed: replySeed)` and closes. Reaching the reply proves the client's
    /// half-close arrived while the other direction stayed open.
    static func verifyThenReply(expectSeed: UInt64, replySeed: UInt64, replyBytes: Int, log: BackendLog) throws -> TCPListener {
        let listener = try TCPListener()
        listener.serve { connection in
            var expected = ByteStream(seed: expectSeed)
            var total = 0
            var matched = true
            while let chunk = try? connection.receive(), !chunk.isEmpty {
                if matched, chunk != expected.next(chunk.count) { matched = false }
                total += chunk.count
            }
            log.record(received: total, matched: matched)
            var reply = ByteStream(seed: replySeed)
            var sent = 0
            while sent < replyBytes {
                let size = min(256 * 1024, replyBytes - sent)
                guard (try? connection.send(reply.next(size))) != nil else { return }
                sent += size
            }
        }
        return listener
    }

    /// Echoes everything back until the client closes.
    static func echo() throws -> TCPListener {
        let listener = try TCPListener()
        listener.serve { connection in
            while let chunk = try? connection.receive(), !chunk.isEmpty {
                guard (try? connection.send(chunk)) != nil else { return }
            }
        }
        return listener
    }

    /// Answers every connection with `text` and closes.
    static func greeter(_ text: String) throws -> TCPListener {
        let listener = try TCPListener()
        listener.serve { connection in try? connection.send(text) }
        return listener
    }

    /// Sends data as fast as the client takes it, for `seconds`, counting nothing itself.
    static func source(seconds: Double) throws -> TCPListener {
        let listener = try TCPListener()
        listener.serve { connection in
            let chunk = [UInt8](repeating: 0x5a, count: 64 * 1024)
            let end = Date().addingTimeInterval(seconds)
            while Date() < end, (try? connection.send(chunk)) != nil {}
        }
        return listener
    }

    /// Reads and discards everything, recording how many bytes arrived.
    static func sink(log: BackendLog) throws -> TCPListener {
        let listener = try TCPListener()
        listener.serve { connection in
            var total = 0
            var first: Double?
            var last = monotonicSeconds()
            while let chunk = try? connection.receive(), !chunk.isEmpty {
                total += chunk.count
                last = monotonicSeconds()
                if first == nil { first = last }
            }
            log.record(received: total, matched: true, first: first ?? last, last: last)
        }
        return listener
    }

}

/// Echoes UDP datagrams back to their sender on a background thread, until released. Its receive buffer holds
/// a burst of thousands of datagrams.
final class UDPEchoServer: @unchecked Sendable {
    private let socket: UDPSocket
    var port: Int { socket.port }

    init() throws {
        let socket = try UDPSocket(timeout: 1)
        // As root past net.core.rmem_max (a fresh machine's is 208 KiB, a few hundred datagrams).
        var buffer: Int32 = 16 << 20
        let size = socklen_t(MemoryLayout<Int32>.size)
        if setsockopt(socket.fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, size) != 0 { setsockopt(socket.fd, SOL_SOCKET, SO_RCVBUF, &buffer, size) }
        self.socket = socket
        Thread {
            while true {
                guard let (bytes, port) = socket.receive() else { continue }
                if bytes == Array("quit".utf8) { return }
                try? socket.send(bytes, to: port)
            }
        }.start()
    }

    deinit { try? socket.send(Array("quit".utf8), to: socket.port) }
}

/// Runs `body` on a thread and returns a way to wait for its result, for clients that must run while
/// the test thread does something else.
final class Background<T: Sendable>: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var result: Result<T, any Error>?

    init(_ body: @escaping @Sendable () throws -> T) {
        Thread { [self] in
            result = Result { try body() }
            done.signal()
        }.start()
    }

    func value(timeout: TimeInterval = 30) throws -> T {
        guard done.wait(timeout: .now() + timeout) == .success, let result else { throw TimedOut() }
        return try result.get()
    }
}

struct TimedOut: Error {}

/// Sends `size` deterministic bytes through `port` (an echo service at the far end), half-closes, reads to the
/// end, and says what went wrong — nil when exactly the same bytes came back. (Compared here: `#expect` on the
/// arrays would print and diff megabytes.)
func echoMismatch(port: Int, size: Int, seed: UInt64, timeout: TimeInterval = 60) throws -> String? {
    var random = ByteStream(seed: seed)
    let payload = random.next(size)
    let client = try TCPClient(port: port, timeout: timeout)
    let sent = Background {
        defer { client.shutdownWrite() }
        try client.send(payload)
    }
    let received = try client.receiveAll()
    try sent.value(timeout: timeout * 2)
    if received == payload { return nil }
    let firstDifference = zip(received, payload).enumerated().first { $0.element.0 != $0.element.1 }?.offset
    return "received \(received.count) of \(payload.count) bytes, first difference at \(firstDifference.map(String.init) ?? "the end")"
}
