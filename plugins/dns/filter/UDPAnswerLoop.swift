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
    private let lifecycle = ThreadLifecycle()

    /// Answers `descriptor` (a blocking socket bound by `DatagramSocket.bind`, closed by `close`) with `slot`'s
    /// engine once `start` runs.
    init(descriptor: Int32, slot: EngineSlot) {
        self.slot = slot
        self.descriptor = NIOLockedValueBox(descriptor)
    }

    func start() {
        lifecycle.start(name: "weir-dns-udp") { [self] in run() }
    }

    /// Stops the thread (waking it), waits for it, and closes the socket.
    func close() async {
        let started = lifecycle.requestStop()
        let fd = descriptor.withLockedValue { $0 }
        guard fd >= 0 else { return }
        _ = shutdown(fd, Int32(SHUT_RDWR))
        if started { await lifecycle.waitForEnd() }
        descriptor.withLockedValue { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
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
            if received == 0 || lifecycle.stopping { return }
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
