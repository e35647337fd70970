import Foundation
import NIOConcurrencyHelpers
import NIOCore
import CWeirSystem
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

/// One UDP socket of a dns.filter and the thread that answers it: up to 32 datagrams read with one
/// recvmmsg, the answers that need no waiting (cache hits, blocked names, canaries, garbage) written with one
/// sendmmsg, the others answered by a task each with sendto. A cached answer costs what the kernel costs and
/// the engine's lookup: no channel pipeline, no envelope, buffer or address text per datagram — what kept the
/// NIO path at 0.7 of unbound's rate (see the README's DNS benchmark).
///
/// The socket is blocking: the thread waits in recvmmsg (MSG_WAITFORONE: it returns once one datagram came,
/// with as many as are queued), and `close` wakes it with shutdown (which Linux honours on unconnected UDP
/// sockets) before the descriptor is closed. Sends from tasks and the close take `descriptor`'s lock, so a
/// late answer never goes to a descriptor number the process has since reused.
final class UDPAnswerLoop: @unchecked Sendable {
    static let batch = DNSFilter.queriesPerRead
    static let slotSize = DNSFilter.largestQuery

    private let slot: EngineSlot
    /// The socket, or -1 once closed.
    private let descriptor: NIOLockedValueBox<Int32>
    /// The thread's life: started, asked to stop, ended (with who waits for its end).
    private struct Lifecycle {
        var started = false
        var stopping = false
        var ended = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let lifecycle = NIOLockedValueBox(Lifecycle())

    struct BindFailure: Error, CustomStringConvertible {
        let description: String
    }

    /// A socket bound to `address` (SO_REUSEPORT: the kernel spreads clients over every socket of the
    /// address), its receive buffer enlarged, answered by `slot`'s engine once `start` runs.
    init(address: SocketAddress, slot: EngineSlot) throws {
        self.slot = slot
        let family = address.protocol.rawValue
        let fd = socket(family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw BindFailure(description: "socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1, zero: Int32 = 0, buffer: Int32 = 4 << 20
        let size = socklen_t(MemoryLayout<Int32>.size)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, size)
        // 4 MiB of queued queries (the default, ~200 KiB, overflows in a burst or while a reload compiles a
        // large list on the same cores): SO_RCVBUFFORCE as root, else as far as rmem_max allows.
        if setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, size) != 0 { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer, size) }
        // [::] answers IPv4 clients too (as ::ffff:a.b.c.d), as NIO's sockets did.
        if family == AF_INET6 { setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, size) }
        let bound = address.withSockAddr { pointer, length in bind(fd, pointer, socklen_t(length)) }
        guard bound == 0 else {
            let reason = String(cString: strerror(errno))
            Glibc.close(fd)
            throw BindFailure(description: "bind \(address): \(reason)")
        }
        descriptor = NIOLockedValueBox(fd)
    }

    /// The port the socket is bound to (the configured one, or the kernel's pick for port 0).
    var port: Int {
        descriptor.withLockedValue { fd in
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            _ = withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            return withUnsafePointer(to: &storage) { pointer in
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            }
        }
    }

    func start() {
        lifecycle.withLockedValue { $0.started = true }
        let thread = Thread { [self] in
            run()
            let waiters = lifecycle.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                state.ended = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
        thread.name = "weir-dns-udp"
        thread.start()
    }

    /// Stops the thread (waking it), waits for it, and closes the socket.
    func close() async {
        let started = lifecycle.withLockedValue { state in
            state.stopping = true
            return state.started
        }
        let fd = descriptor.withLockedValue { $0 }
        guard fd >= 0 else { return }
        _ = shutdown(fd, Int32(SHUT_RDWR))
        if started { await waitForThread() }
        descriptor.withLockedValue { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    private func waitForThread() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let ended = lifecycle.withLockedValue { state -> Bool in
                if !state.ended { state.waiters.append(continuation) }
                return state.ended
            }
            if ended { continuation.resume() }
        }
    }

    /// An answer that needed waiting, sent when it is ready (from the task that made it).
    private func send(_ reply: [UInt8], to client: sockaddr_storage, length: socklen_t) {
        descriptor.withLockedValue { fd in
            guard fd >= 0 else { return }
            var client = client
            _ = reply.withUnsafeBytes { bytes in
                withUnsafePointer(to: &client) { address in
                    address.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), $0, length) }
                }
            }
        }
    }

    private func run() {
        let fd = descriptor.withLockedValue { $0 }
        let batch = Self.batch, slotSize = Self.slotSize
        // A slot of the read buffer and the peer per datagram read, and the same for the answers given at
        // once; allocated once for the thread's life.
        let input = UnsafeMutableRawPointer.allocate(byteCount: batch * slotSize, alignment: 16)
        let output = UnsafeMutableRawPointer.allocate(byteCount: batch * slotSize, alignment: 16)
        let queries = UnsafeMutablePointer<weir_datagram>.allocate(capacity: batch)
        let answers = UnsafeMutablePointer<weir_datagram>.allocate(capacity: batch)
        defer {
            input.deallocate()
            output.deallocate()
            queries.deallocate()
            answers.deallocate()
        }
        for index in 0..<batch {
            queries[index] = weir_datagram()
            queries[index].buffer = input + index * slotSize
            queries[index].capacity = slotSize
            answers[index] = weir_datagram()
            answers[index].buffer = output + index * slotSize
            answers[index].capacity = slotSize
        }
        // The answers of each read, counted and logged together; its storage kept from read to read.
        var answered = slot.current.batch()
        while true {
            let received = Int(weir_udp_receive(fd, queries, UInt32(batch)))
            // 0: shut down (closing).
            if received == 0 || lifecycle.withLockedValue({ $0.stopping }) { return }
            guard received > 0 else {
                // An error on a bound UDP socket (an ICMP error for an earlier answer, memory short for a
                // moment) leaves it usable; a pause keeps one that repeats from spinning a core.
                if received != -Int(ECONNREFUSED) { usleep(1000) }
                continue
            }
            let engine = slot.current
            engine.restart(&answered)
            var replies = 0
            for index in 0..<received {
                let query = queries[index]
                let bytes = [UInt8](UnsafeRawBufferPointer(start: query.buffer, count: query.length))
                guard let client = DNSClient(query.address) else { continue }
                // The answer goes straight into its send slot.
                let reply = UnsafeMutableRawBufferPointer(start: answers[replies].buffer, count: slotSize)
                let length: Int?
                switch engine.answerImmediately(bytes, client: client, udp: true, batch: &answered) {
                case .answered(let made):
                    guard let made, made.count <= reply.count else { continue }
                    made.withUnsafeBytes { reply.copyMemory(from: $0) }
                    length = made.count
                case .cached(let hit):
                    length = hit.write(into: reply)
                case .deferred(let pending):
                    let (address, length) = (query.address, query.address_length)
                    Task {
                        let reply = await engine.answer(pending)
                        self.send(reply, to: address, length: length)
                    }
                    continue
                }
                guard let length else { continue }
                answers[replies].length = length
                answers[replies].address = query.address
                answers[replies].address_length = query.address_length
                replies += 1
            }
            if replies > 0 { _ = weir_udp_send(fd, answers, UInt32(replies)) }
            engine.record(&answered)
        }
    }
}
