import CWeirSystem
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// One listening UDP socket of a datagram listener and the thread that relays its sessions: one connected UDP
/// socket towards the target per client address, the target's replies sent back to that client from the
/// listening socket.
///
/// No NIO here, for the same reason as dns.filter's answer loops: a session opened through a NIO channel (its
/// pipeline, futures, a 64 KiB receive buffer) cost ~100 µs of CPU, a quarter of nginx's rate for a burst of new
/// clients. Here a session is a socket, an epoll registration and a table entry; clients' datagrams are read up
/// to 32 per recvmmsg and the replies of every session that answered sent back together with one sendmmsg.
///
/// Sessions idle longer than the connector's `idle_timeout` are closed; the listener's table (all its sockets
/// together) is bounded by the connector's `max_sessions`, so a flood of spoofed sources cannot exhaust memory
/// or descriptors. Sessions keep the forwarder they started with, like TCP connections keep theirs across a
/// reload. The session table belongs to the thread; targets chosen elsewhere (names resolved off the thread)
/// come back through `chosen` and a wakeup.
final class DatagramRelayLoop: @unchecked Sendable {
    static let batch = 32
    /// The largest UDP payload (65,507 bytes) fits a slot.
    static let slotSize = 65536
    /// At most this many datagrams wait per session while its target is being chosen.
    static let pendingLimit = 64
    static let sweepInterval: UInt64 = 250_000_000

    /// One client's session.
    final class Session: @unchecked Sendable {
        let peer: DatagramPeer
        let address: sockaddr_storage
        let addressLength: socklen_t
        let forwarder: DatagramForwarder
        var filters: [any DatagramSessionFilter] = []
        /// The connected socket towards the target, once chosen; -1 before.
        var fd: Int32 = -1
        var target: SocketAddress?
        var pending: [[UInt8]] = []
        var lastActivity: UInt64
        var closed = false

        init(peer: DatagramPeer, address: sockaddr_storage, length: socklen_t, forwarder: DatagramForwarder, now: UInt64) {
            self.peer = peer
            self.address = address
            self.addressLength = length
            self.forwarder = forwarder
            self.lastActivity = now
        }

        func admit(bytes: Int, direction: TrafficDirection) -> Bool {
            filters.allSatisfy { $0.admit(bytes: bytes, direction: direction) }
        }
    }

    private let socket: ListenerSocket
    private let listening: Int32
    private let local: SocketAddress?
    /// For the connection info of sessions (filters and connectors make their futures on it).
    private let eventLoop: any EventLoop
    private let poll: Int32
    private let wakeup: Int32
    /// Targets chosen off the thread, and whether the wakeup descriptor is still open (a resolution that ends
    /// after `close` must not write to a descriptor number the process has since reused).
    private let chosen = NIOLockedValueBox((results: [(Session, Result<SocketAddress, any Error>)](), open: true))
    private let lifecycle = ThreadLifecycle()

    private var sessions: [DatagramPeer: Session] = [:]
    private var bySocket: [Int32: Session] = [:]
    /// Replies read and not yet sent (the first slots of the thread's reply batch).
    private var repliesWaiting = 0
    /// Failed sessions' warnings, at most one per 10 s.
    private var failureLog = LogThrottle(interval: 10_000_000_000)

    /// Tags of the descriptors that are not sessions' (a session's tag is its descriptor).
    private static let listeningTag = UInt64.max
    private static let wakeupTag = UInt64.max - 1

    /// Takes over `listening` (closed by `close`).
    init(listening: Int32, socket: ListenerSocket, eventLoop: any EventLoop) throws {
        let (poll, wakeup) = try WakeablePoll.open(wakeupTag: Self.wakeupTag)
        let added = weir_poll_add(poll, listening, Self.listeningTag)
        guard added == 0 else {
            Glibc.close(poll)
            Glibc.close(wakeup)
            throw IOError(errnoCode: -added, reason: "epoll_ctl")
        }
        self.listening = listening
        self.socket = socket
        self.eventLoop = eventLoop
        self.poll = poll
        self.wakeup = wakeup
        local = DatagramSocket.localAddress(listening)
    }

    func start() {
        lifecycle.start(name: "weir-udp-relay") { [self] in run() }
    }

    /// Stops the thread (closing every session) and closes the sockets.
    func close() async {
        lifecycle.requestStop()
        weir_poll_wakeup(wakeup)
        await lifecycle.waitForEnd()
        chosen.withLockedValue { $0.open = false }
        Glibc.close(listening)
        Glibc.close(wakeup)
        Glibc.close(poll)
    }

    // MARK: - The thread

    private func run() {
        let clients = DatagramBatch(count: Self.batch, slotSize: Self.slotSize)
        let replies = DatagramBatch(count: Self.batch, slotSize: Self.slotSize)
        let tags = UnsafeMutablePointer<UInt64>.allocate(capacity: 128)
        defer {
            tags.deallocate()
            for session in Array(sessions.values) { remove(session) }
        }
        var nextSweep = Self.now() + Self.sweepInterval
        while !lifecycle.stopping {
            let wait = Int32(clamping: (nextSweep &- min(Self.now(), nextSweep)) / 1_000_000 + 1)
            let ready = Int(weir_poll_wait(poll, tags, 128, wait))
            let now = Self.now()
            for index in 0..<max(ready, 0) {
                switch tags[index] {
                case Self.listeningTag: readClients(clients, now: now)
                case Self.wakeupTag:
                    weir_poll_wakeup_drain(wakeup)
                    takeChosen()
                default:
                    if let session = bySocket[Int32(truncatingIfNeeded: tags[index])] {
                        readReplies(session, replies, now: now)
                    }
                }
            }
            sendReplies(replies)
            if now >= nextSweep {
                closeIdleSessions(now: now)
                nextSweep = now + Self.sweepInterval
            }
        }
    }

    /// Clients' datagrams: a few batches per wakeup, so a flood on the listening socket cannot starve the
    /// sessions' replies (epoll reports the socket again while datagrams are left).
    private func readClients(_ clients: DatagramBatch, now: UInt64) {
        for _ in 0..<8 {
            let received = Int(weir_udp_receive_now(listening, clients.datagrams, UInt32(Self.batch)))
            guard received > 0 else { return }
            for index in 0..<received { relay(clients.datagrams[index], now: now) }
            if received < Self.batch { return }
        }
    }

    private func relay(_ datagram: weir_datagram, now: UInt64) {
        guard let peer = DatagramPeer(datagram.address) else { return }
        let session: Session
        if let existing = sessions[peer] {
            session = existing
        } else {
            guard let opened = open(peer, datagram, now: now) else { return }
            session = opened
        }
        session.lastActivity = now
        let length = datagram.length
        guard session.admit(bytes: length, direction: .in) else { return }
        if session.fd >= 0 {
            send(datagram.buffer, length, on: session)
        } else if session.pending.count < Self.pendingLimit {
            session.pending.append([UInt8](UnsafeRawBufferPointer(start: datagram.buffer, count: length)))
        }
    }

    /// A new client: a session in the table, its target chosen (at once for IP literals, else off the thread).
    private func open(_ peer: DatagramPeer, _ datagram: weir_datagram, now: UInt64) -> Session? {
        guard case .datagram(let forwarder) = socket.currentOwner else { return nil }
        guard socket.datagramSessions.take() else {
            forwarder.metrics.error(stage: forwarder.connectorType, reason: "session_limit")
            return nil
        }
        let session = Session(peer: peer, address: datagram.address, length: datagram.address_length, forwarder: forwarder, now: now)
        let info = ConnectionInfo(pipeline: forwarder.pipeline, client: DatagramSocket.address(datagram.address), local: local, eventLoop: eventLoop)
        session.filters = forwarder.sessionFilters(for: info)
        sessions[peer] = session
        forwarder.metrics.connectionsTotal.increment()
        forwarder.metrics.connectionsActive.increment()
        switch forwarder.connector.target(for: info) {
        case .now(let target):
            connect(session, to: target)
        case .later(let future):
            future.whenComplete { [self] result in
                chosen.withLockedValue { chosen in
                    guard chosen.open else { return }
                    chosen.results.append((session, result))
                    weir_poll_wakeup(wakeup)
                }
            }
        }
        return session.closed ? nil : session
    }

    private func takeChosen() {
        let results = chosen.withLockedValue { chosen in
            defer { chosen.results = [] }
            return chosen.results
        }
        for (session, result) in results where !session.closed {
            switch result {
            case .success(let target): connect(session, to: target)
            case .failure(let error): failed(session, error)
            }
        }
    }

    /// The session's socket towards `target`; what waited goes out.
    private func connect(_ session: Session, to target: SocketAddress) {
        let fd = Glibc.socket(target.protocol.rawValue, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return failed(session, IOError(errnoCode: errno, reason: "socket")) }
        let connected = target.withSockAddr { pointer, length in Glibc.connect(fd, pointer, socklen_t(length)) }
        let code = connected == 0 ? -weir_poll_add(poll, fd, UInt64(fd)) : errno
        guard code == 0 else {
            Glibc.close(fd)
            return failed(session, IOError(errnoCode: code, reason: connected == 0 ? "epoll_ctl" : "connect"))
        }
        session.fd = fd
        session.target = target
        bySocket[fd] = session
        let waiting = session.pending
        session.pending = []
        for datagram in waiting where !session.closed {
            datagram.withUnsafeBytes { send($0.baseAddress, $0.count, on: session) }
        }
    }

    private func send(_ bytes: UnsafeRawPointer?, _ length: Int, on session: Session) {
        let sent = Glibc.send(session.fd, bytes, length, Int32(MSG_DONTWAIT) | Int32(MSG_NOSIGNAL))
        if sent >= 0 {
            session.forwarder.metrics.bytesIn.increment(by: Int64(length))
        } else if errno == ECONNREFUSED {
            unreachable(session)
        }
        // A full socket buffer drops the datagram, as the network would.
    }

    /// The targets' replies of one wakeup, sent back to their clients from the listening socket with one
    /// sendmmsg (per `batch` replies) however many sessions they came from.
    private func readReplies(_ session: Session, _ replies: DatagramBatch, now: UInt64) {
        for _ in 0..<4 {
            if repliesWaiting == Self.batch { sendReplies(replies) }
            let room = Self.batch - repliesWaiting
            let received = Int(weir_udp_receive_now(session.fd, replies.datagrams + repliesWaiting, UInt32(room)))
            if received == -Int(ECONNREFUSED) { return unreachable(session) }
            guard received > 0 else { return }
            session.lastActivity = now
            var bytes = 0
            // Admitted replies stay in their slots, moved up over dropped ones (slots swap whole, buffers
            // included).
            var kept = repliesWaiting
            for index in repliesWaiting..<(repliesWaiting + received) {
                guard session.admit(bytes: replies.datagrams[index].length, direction: .out) else { continue }
                replies.datagrams[index].address = session.address
                replies.datagrams[index].address_length = session.addressLength
                bytes += replies.datagrams[index].length
                if kept != index { swap(&replies.datagrams[kept], &replies.datagrams[index]) }
                kept += 1
            }
            repliesWaiting = kept
            if bytes > 0 { session.forwarder.metrics.bytesOut.increment(by: Int64(bytes)) }
            if received < room { return }
        }
    }

    private func sendReplies(_ replies: DatagramBatch) {
        if repliesWaiting > 0 { _ = weir_udp_send(listening, replies.datagrams, UInt32(repliesWaiting)) }
        repliesWaiting = 0
    }

    /// A connected UDP socket reports an ICMP port-unreachable as ECONNREFUSED: the target is down, so the
    /// session ends and the connector picks another address for the client's next datagram.
    private func unreachable(_ session: Session) {
        let forwarder = session.forwarder
        forwarder.metrics.error(stage: forwarder.connectorType, reason: "target_unreachable")
        if let target = session.target { forwarder.connector.targetUnreachable(target) }
        remove(session)
    }

    /// Every failed session is counted; the warning is logged at most every 10 s per listening socket, with
    /// how many were held back (out of descriptors, each new client's first datagram would log one).
    private func failed(_ session: Session, _ error: any Error) {
        let forwarder = session.forwarder
        forwarder.metrics.error(stage: forwarder.connectorType, reason: "connect_failed")
        if let heldBack = failureLog.admit(now: DispatchTime.now().uptimeNanoseconds) {
            var metadata: Logger.Metadata = ["pipeline": "\(forwarder.pipeline)", "error": "\(error)"]
            if heldBack > 0 { metadata["held_back"] = "\(heldBack)" }
            forwarder.logger.warning("UDP session failed", metadata: metadata)
        }
        remove(session)
    }

    private func remove(_ session: Session) {
        guard !session.closed else { return }
        session.closed = true
        if sessions[session.peer] === session { sessions[session.peer] = nil }
        if session.fd >= 0 {
            bySocket[session.fd] = nil
            Glibc.close(session.fd)
        }
        socket.datagramSessions.release()
        session.forwarder.metrics.connectionsActive.decrement()
    }

    private func closeIdleSessions(now: UInt64) {
        for session in Array(sessions.values) {
            let idle = UInt64(max(session.forwarder.connector.idleTimeout.nanoseconds, 0))
            if now &- session.lastActivity >= idle { remove(session) }
        }
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}

/// Receive (or send) slots for one batch of datagrams, allocated once for the thread's life.
final class DatagramBatch {
    let datagrams: UnsafeMutablePointer<weir_datagram>
    private let storage: UnsafeMutableRawPointer

    init(count: Int, slotSize: Int) {
        storage = UnsafeMutableRawPointer.allocate(byteCount: count * slotSize, alignment: 16)
        datagrams = UnsafeMutablePointer<weir_datagram>.allocate(capacity: count)
        for index in 0..<count {
            datagrams[index] = weir_datagram()
            datagrams[index].buffer = storage + index * slotSize
            datagrams[index].capacity = slotSize
        }
    }

    deinit {
        storage.deallocate()
        datagrams.deallocate()
    }
}

/// A client's address and port as plain bytes: the session table's key, no allocation per datagram.
struct DatagramPeer: Hashable {
    private let address: DNSClient
    private let port: UInt16

    /// nil for a family other than IPv4 and IPv6.
    init?(_ storage: sockaddr_storage) {
        guard let address = DNSClient(storage) else { return nil }
        self.address = address
        // sin_port and sin6_port share their place, right after the family.
        port = withUnsafeBytes(of: storage) { $0.loadUnaligned(fromByteOffset: MemoryLayout<sa_family_t>.size, as: UInt16.self) }
    }
}
