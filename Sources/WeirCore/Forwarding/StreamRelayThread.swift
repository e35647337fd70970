import CWeirSystem
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A thread that accepts on the stream listeners' sockets and relays plain forwards on raw descriptors.
///
/// A plain forward (listen.tcp → connect.tcp to fixed addresses, nothing between but pacing filters such as
/// limit.bandwidth) needs no NIO channel: its bytes are never looked at. Through two channels a connection
/// cost ~200 µs of CPU to open and close (half of it NIO's channel setup, 13 epoll_ctl calls) and ~3 KiB of
/// memory per idle connection; here it is two sockets, two edge-triggered epoll registrations and one object,
/// and its bytes move with splice(2) through a pipe borrowed while they are in it. Connections of any other
/// pipeline are accepted here too and handed to NIO as channels, on its event loops in turn (the listener's
/// socket stays one whatever its owner becomes on reload).
///
/// Every thread watches every listening socket (EPOLLEXCLUSIVE: one thread is woken per connection); a relayed
/// connection stays with the thread that accepted it, or the one with the fewest connections when that holds
/// two more (StreamRelayEngine.relay). Connections outlive their listener (a reload closes the socket; the
/// pipeline's tracker drains them).
final class StreamRelayThread: @unchecked Sendable {
    enum Request {
        case listen(Int32, ListenerSocket)
        /// Accept on the socket or not; ignored unless `fd` is still that listener's (a descriptor number is
        /// reused once its socket is closed).
        case accepting(Int32, ListenerSocket, Bool)
        case unlisten(Int32, @Sendable () -> Void)
        /// Close the connection with this tag (a drain past its grace).
        case close(UInt64)
        /// Relay a client another thread accepted (see StreamRelayEngine.relay).
        case adopt(Int32, StreamForwarder, DirectTargets, @Sendable () -> Void)
    }

    let index: Int
    private let poll: Int32
    private let wakeup: Int32
    private let requests = NIOLockedValueBox<[Request]>([])
    private let lifecycle = ThreadLifecycle()

    /// Bytes one direction moves before other connections get their turn.
    static let fairnessLimit = 1 << 20
    static let sweepInterval: UInt64 = 100_000_000
    /// Connections accepted per listener per wakeup, so one listener cannot starve the rest.
    static let acceptBatch = 64

    // The thread's own state.
    private var listeners: [Int32: (socket: ListenerSocket, watched: Bool)] = [:]
    private var connections: [SplicedConnection?] = []
    private var generations: [UInt32] = []
    private var freeSlots: [Int] = []
    private var open = 0
    /// Connections given to the thread and not yet closed, those still on their way to it (`.adopt`)
    /// included: an accepted client goes to the thread with the fewest (StreamRelayEngine.relay).
    let load = Atomic<Int>(0)
    /// Connections that stopped at the fairness limit, to go on after this wakeup's events.
    private var unfinished: [SplicedConnection] = []
    /// When paced directions may read again.
    private var wakeups = RelayWakeups()
    private let pipes: SplicePipePool
    /// Where copying directions read into (see SpliceHolding).
    private let scratch = HeldBytes()

    private static let wakeupTag = UInt64.max
    private static let listenerFlag: UInt64 = 1 << 63

    init(index: Int, maxPipes: Int) throws {
        (poll, wakeup) = try WakeablePoll.open(wakeupTag: Self.wakeupTag)
        self.index = index
        pipes = SplicePipePool(maxLent: maxPipes)
    }

    func start() {
        lifecycle.start(name: "weir-tcp-\(index)") { [self] in run() }
    }

    /// Hands the thread a request; it acts on it at its next wakeup, requests in the order they came.
    func post(_ request: Request) {
        let first = requests.withLockedValue { requests in
            requests.append(request)
            return requests.count == 1
        }
        if first { weir_poll_wakeup(wakeup) }
    }

    // MARK: - The thread

    private func run() {
        let capacity = 128
        let tags = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity)
        let events = UnsafeMutablePointer<UInt32>.allocate(capacity: capacity)
        defer {
            tags.deallocate()
            events.deallocate()
        }
        var nextSweep = Self.now() + Self.sweepInterval
        while !lifecycle.stopping {
            var timeout: Int32 = !unfinished.isEmpty ? 0 : open > 0 ? Int32(Self.sweepInterval / 1_000_000) : -1
            if !wakeups.isEmpty, let paced = wakeups.millisecondsUntilNext(now: Self.now()), timeout < 0 || paced < timeout {
                timeout = paced
            }
            let ready = Int(weir_poll_wait_events(poll, tags, events, Int32(capacity), timeout))
            let now = Self.now()
            for index in 0..<max(ready, 0) {
                let tag = tags[index]
                if tag == Self.wakeupTag {
                    weir_poll_wakeup_drain(wakeup)
                    takeRequests(now: now)
                } else if tag & Self.listenerFlag != 0 {
                    accept(on: Int32(truncatingIfNeeded: tag & 0xffff_ffff), now: now)
                } else if let connection = connection(tagged: tag) {
                    handle(events[index], side: tag & 1, of: connection, now: now)
                }
            }
            let again = unfinished
            unfinished = []
            for connection in again where !connection.closed { pump(connection, now: now) }
            for due in wakeups.takeDue(now: now) {
                guard let connection = connection(tagged: due.tag) else { continue }
                let pacing = due.tag & 1 == 0 ? connection.toTarget.pacing : connection.toClient.pacing
                if pacing?.resumeAt == due.time { pump(connection, now: now) }
            }
            if now >= nextSweep {
                sweep(now: now)
                nextSweep = now + Self.sweepInterval
            }
        }
    }

    private func takeRequests(now: UInt64) {
        let taken = requests.withLockedValue { requests in
            defer { requests = [] }
            return requests
        }
        for request in taken {
            switch request {
            case .listen(let fd, let socket):
                listeners[fd] = (socket, false)
            case .accepting(let fd, let socket, let on):
                guard let listener = listeners[fd], listener.socket === socket, listener.watched != on else { continue }
                let result = on
                    ? weir_poll_add_events(poll, fd, WEIR_POLL_IN | WEIR_POLL_EXCLUSIVE, Self.listenerFlag | UInt64(UInt32(bitPattern: fd)))
                    : weir_poll_remove(poll, fd)
                if result == 0 { listeners[fd]?.watched = on }
            case .unlisten(let fd, let done):
                if listeners[fd]?.watched == true { _ = weir_poll_remove(poll, fd) }
                listeners[fd] = nil
                done()
            case .close(let tag):
                if let connection = connection(tagged: tag) { close(connection) }
            case .adopt(let client, let forwarder, let targets, let releaseBudgets):
                relay(client, forwarder: forwarder, targets: targets, releaseBudgets: releaseBudgets, now: now)
            }
        }
    }

    // MARK: Accepting

    private func accept(on listening: Int32, now: UInt64) {
        guard let listener = listeners[listening], listener.watched else { return }
        for _ in 0..<Self.acceptBatch {
            let fd = weir_stream_accept(listening)
            if fd >= 0 {
                listener.socket.accepted(fd, by: self, now: now)
                continue
            }
            switch -fd {
            case EAGAIN: return
            // The client gave up before it was accepted; the next one may be fine.
            case ECONNABORTED, EPROTO, EPERM, ENETDOWN, ENOPROTOOPT, EHOSTDOWN, ENONET, EHOSTUNREACH, EOPNOTSUPP, ENETUNREACH:
                continue
            default:
                listener.socket.acceptFailed(IOError(errnoCode: -fd, reason: "accept4"))
                return
            }
        }
    }

    /// Relays an accepted client of a plain forward: registers it, then connects to the first target. Its place
    /// in `load` was taken by StreamRelayEngine.relay, and is given back when it closes.
    fileprivate func relay(_ client: Int32, forwarder: StreamForwarder, targets: DirectTargets, releaseBudgets: @escaping @Sendable () -> Void, now: UInt64) {
        let slot = freeSlots.popLast() ?? {
            connections.append(nil)
            generations.append(0)
            return connections.count - 1
        }()
        // 31 bits of generation: the top bit marks listeners' tags, and a slot may be reused billions of times.
        let tag = UInt64(generations[slot] & 0x7fff_ffff) << 32 | UInt64(slot) << 1
        let connection = SplicedConnection(client: client, forwarder: forwarder, targets: targets, releaseBudgets: releaseBudgets, tag: tag, now: now)
        if !forwarder.pacing.isEmpty {
            let pacers = forwarder.pacing.map { $0.pacers() }
            connection.toTarget.pacing = RelayPacing(pacers.map(\.toTarget))
            connection.toClient.pacing = RelayPacing(pacers.map(\.toClient))
        }
        connections[slot] = connection
        open += 1
        guard forwarder.tracker.admit(relayed: ObjectIdentifier(connection), close: { [self] in post(.close(tag)) }) else {
            // The pipeline is stopping (a reload replaced it between the accept and now).
            return close(connection, counted: false)
        }
        forwarder.metrics.connectionsTotal.increment()
        forwarder.metrics.connectionsActive.increment()
        guard weir_poll_add_events(poll, client, Self.socketEvents, tag) == 0 else {
            forwarder.metrics.error(stage: "pipeline", reason: "setup_failed")
            return close(connection)
        }
        connect(connection, now: now)
    }

    /// Input, output, their ends and errors, edge-triggered: one registration per socket for its whole life.
    private static let socketEvents = WEIR_POLL_IN | WEIR_POLL_OUT | WEIR_POLL_RDHUP | WEIR_POLL_EDGE

    private func connection(tagged tag: UInt64) -> SplicedConnection? {
        let slot = Int((tag & 0xffff_ffff) >> 1)
        guard slot < connections.count, let connection = connections[slot], connection.tag == tag & ~1 else { return nil }
        return connection
    }

    // MARK: Connecting

    /// Starts connecting to the current target or, when it cannot even start, the ones after it.
    private func connect(_ connection: SplicedConnection, now: UInt64) {
        guard case .connecting(var attempt, var errors) = connection.state else { return }
        let addresses = connection.targets.addresses
        while attempt < addresses.count {
            let address = addresses[attempt]
            let fd = address.withSockAddr { weir_stream_connect($0, socklen_t($1)) }
            if fd >= 0 {
                if weir_poll_add_events(poll, fd, Self.socketEvents, connection.tag | 1) == 0 {
                    connection.target = fd
                    connection.state = .connecting(attempt: attempt, errors: errors)
                    connection.connectDeadline = now + connection.targets.connectTimeoutNanoseconds
                    return
                }
                Glibc.close(fd)
                errors.append("\(address): \(IOError(errnoCode: ENOMEM, reason: "epoll_ctl"))")
            } else {
                errors.append("\(address): \(IOError(errnoCode: -fd, reason: "connect"))")
            }
            attempt += 1
        }
        connectFailed(connection, errors: errors)
    }

    /// The current attempt failed: on to the next target.
    private func attemptFailed(_ connection: SplicedConnection, _ error: String, now: UInt64) {
        guard case .connecting(let attempt, let errors) = connection.state else { return }
        Glibc.close(connection.target)
        connection.target = -1
        connection.state = .connecting(attempt: attempt + 1, errors: errors + ["\(connection.targets.addresses[attempt]): \(error)"])
        connect(connection, now: now)
    }

    private func connectFailed(_ connection: SplicedConnection, errors: [String]) {
        let forwarder = connection.forwarder
        forwarder.metrics.error(stage: forwarder.connectorType, reason: "connect_failed")
        forwarder.logConnectFailed(
            client: Self.peer(of: connection.client), destination: "-", error: "no target answered (\(errors.joined(separator: "; ")))")
        close(connection)
    }

    /// "203.0.113.5:40112" for log lines.
    private static func peer(of fd: Int32) -> String {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let got = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(fd, $0, &length) }
        }
        return got == 0 ? StreamForwarder.describe(DatagramSocket.address(storage)) : "?"
    }

    // MARK: Relaying

    private func handle(_ events: UInt32, side: UInt64, of connection: SplicedConnection, now: UInt64) {
        if case .connecting = connection.state {
            guard side == 1 else { return }
            // Writable without an error is connected (no system call to ask); an error or hang-up failed.
            if events & (WEIR_POLL_ERR | WEIR_POLL_HUP) != 0 {
                let result = weir_stream_connect_result(connection.target)
                return attemptFailed(connection, "\(IOError(errnoCode: result < 0 ? -result : ECONNREFUSED, reason: "connect"))", now: now)
            }
            guard events & WEIR_POLL_OUT != 0 else { return }
            connection.state = .relaying
            connection.lastActivity = now
            pump(connection, now: now)
            return
        }
        let readable = events & (WEIR_POLL_IN | WEIR_POLL_RDHUP | WEIR_POLL_HUP | WEIR_POLL_ERR) != 0
        let writable = events & (WEIR_POLL_OUT | WEIR_POLL_HUP | WEIR_POLL_ERR) != 0
        if side == 0 {
            if readable { connection.toTarget.state.sourceReadable = true }
            if writable { connection.toClient.state.destinationWritable = true }
        } else {
            if readable { connection.toClient.state.sourceReadable = true }
            if writable { connection.toTarget.state.destinationWritable = true }
        }
        pump(connection, now: now)
    }

    private func pump(_ connection: SplicedConnection, now: UInt64) {
        let metrics = connection.forwarder.metrics
        let sent = connection.toTarget.pump(
            from: connection.client, to: connection.target, pool: pipes, scratch: scratch, limit: Self.fairnessLimit,
            otherFinished: connection.toClient.state.shut, reading: mayRead(&connection.toTarget, tag: connection.tag, now: now))
        let received = connection.toClient.pump(
            from: connection.target, to: connection.client, pool: pipes, scratch: scratch, limit: Self.fairnessLimit,
            otherFinished: connection.toTarget.state.shut, reading: mayRead(&connection.toClient, tag: connection.tag | 1, now: now))
        if sent.read > 0 { metrics.bytesIn.increment(by: Int64(sent.read)) }
        if received.read > 0 { metrics.bytesOut.increment(by: Int64(received.read)) }
        if sent.read > 0 || received.read > 0 { connection.lastActivity = now }
        if case .failed = sent.outcome { return close(connection) }
        if case .failed = received.outcome { return close(connection) }
        if connection.isFinished { return close(connection) }
        if sent.outcome == .more || received.outcome == .more { unfinished.append(connection) }
    }

    /// Whether a direction may read now: unpaced, or its pacers allow it. A new wait gets a wakeup (`tag`
    /// names the direction: its connection's tag, and the side it reads from).
    private func mayRead(_ direction: inout RelayedDirection, tag: UInt64, now: UInt64) -> Bool {
        guard var pacing = direction.pacing else { return true }
        defer { direction.pacing = pacing }
        switch pacing.decide(now: now) {
        case .read: return true
        case .wait(let until, let new):
            if new { wakeups.add(until, tag: tag) }
            return false
        }
    }

    /// Connect attempts past their time, connections idle past the listener's `idle_timeout`; pooled pipes
    /// not used since the last sweep.
    private func sweep(now: UInt64) {
        pipes.trim()
        for case let connection? in connections {
            switch connection.state {
            case .connecting:
                if now >= connection.connectDeadline { attemptFailed(connection, "connect timed out", now: now) }
            case .relaying:
                guard let idle = connection.forwarder.idleTimeoutNanoseconds, now &- connection.lastActivity >= idle else { continue }
                // A direction its pacers hold back is not idle.
                if connection.toTarget.pacing?.waiting(now: now) == true || connection.toClient.pacing?.waiting(now: now) == true {
                    continue
                }
                connection.forwarder.metrics.error(stage: connection.forwarder.listenerType, reason: "idle_timeout")
                close(connection)
            }
        }
    }

    /// `counted`: whether the connection was admitted by its pipeline's tracker and counted as open.
    private func close(_ connection: SplicedConnection, counted: Bool = true) {
        guard !connection.closed else { return }
        connection.closed = true
        Glibc.close(connection.client)
        if connection.target >= 0 { Glibc.close(connection.target) }
        connection.toTarget.holding?.discard(to: pipes)
        connection.toClient.holding?.discard(to: pipes)
        let slot = Int((connection.tag & 0xffff_ffff) >> 1)
        connections[slot] = nil
        generations[slot] &+= 1
        freeSlots.append(slot)
        open -= 1
        load.subtract(1, ordering: .relaxed)
        if open == 0 { pipes.empty() }
        if counted {
            connection.forwarder.tracker.closed(relayed: ObjectIdentifier(connection))
            connection.forwarder.metrics.connectionsActive.decrement()
        }
        connection.releaseBudgets()
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
}

/// The relay threads, one per core, started on first use and kept for the process's life (idle, they wait).
public final class StreamRelayEngine: Sendable {
    /// The engine, or why its threads could not be made (no epoll instance or eventfd to be had).
    static let shared = Result { try StreamRelayEngine() }

    /// Starts the threads now rather than at the first plain listener.
    public static func start() throws { _ = try shared.get() }

    let threads: [StreamRelayThread]

    private init() throws {
        // A splice or send to a socket the peer reset raises SIGPIPE unless it is ignored (NIO ignores it too,
        // process-wide, once it makes its first socket).
        signal(SIGPIPE, SIG_IGN)
        let count = System.coreCount
        let maxPipes = SplicePipePool.maxLent(descriptors: DescriptorLimit.currentSoft(), threads: count)
        threads = try (0..<count).map { try StreamRelayThread(index: $0, maxPipes: maxPipes) }
        threads.forEach { $0.start() }
    }

    /// Relays a client of a plain forward that `accepting` accepted, on that thread (called there) unless another
    /// holds at least two connections fewer: the kernel wakes the first idle thread for each connection, so
    /// connections opened while the agent is quiet (long-lived ones, say) would otherwise all stay on one
    /// thread, one core. A connection counts in its thread's `load` from here on, so a burst accepted at once
    /// is spread too.
    func relay(
        _ client: Int32, accepting: StreamRelayThread, forwarder: StreamForwarder, targets: DirectTargets,
        releaseBudgets: @escaping @Sendable () -> Void, now: UInt64
    ) {
        var chosen = accepting
        var fewest = accepting.load.load(ordering: .relaxed) - 1
        for thread in threads where thread !== accepting {
            let load = thread.load.load(ordering: .relaxed)
            if load < fewest {
                chosen = thread
                fewest = load
            }
        }
        chosen.load.add(1, ordering: .relaxed)
        if chosen === accepting {
            accepting.relay(client, forwarder: forwarder, targets: targets, releaseBudgets: releaseBudgets, now: now)
        } else {
            chosen.post(.adopt(client, forwarder, targets, releaseBudgets))
        }
    }

    /// Starts watching `fd` (accepting once `setAccepting` says so).
    func listen(_ fd: Int32, socket: ListenerSocket) {
        for thread in threads { thread.post(.listen(fd, socket)) }
    }

    func setAccepting(_ fd: Int32, socket: ListenerSocket, _ on: Bool) {
        for thread in threads { thread.post(.accepting(fd, socket, on)) }
    }

    /// Returns once no thread watches `fd` any more (it may then be closed).
    func stopListening(_ fd: Int32) async {
        for thread in threads {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                thread.post(.unlisten(fd, { done.resume() }))
            }
        }
    }
}
