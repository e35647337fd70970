import CWeirSystem
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// A bound listening socket whose owner can change.
///
/// A reload that changes a pipeline but not its listener hands the socket to the new pipeline instead of
/// closing and rebinding it, so no connection attempt is refused in between.
///
/// It also admits what it accepts: within the listener's own `max_connections` and the agent's, pausing
/// accepting while either is spent, and pausing for a moment when accepting fails for lack of descriptors.
public final class ListenerSocket: Sendable {
    /// The listener stage's fingerprint: a socket is reused only for an identical listener.
    public let fingerprint: String
    /// The listener's stage type, for counting and logging.
    public let stage: String
    private let owner = NIOLockedValueBox<ListenerOwner?>(nil)
    private let boundChannel = NIOLockedValueBox<(any Channel)?>(nil)
    /// A datagram listener's sockets, one per event loop, each relayed by its own thread.
    private let datagramRelays = NIOLockedValueBox<[DatagramRelayLoop]>([])
    private let dialer = NIOLockedValueBox<(any ListenerDialer)?>(nil)
    /// The listener's own budget first, then the agent's.
    private let budgets: [ConnectionBudget]
    /// Why accepting is paused, if it is.
    private let pauses = NIOLockedValueBox<Set<PauseReason>>([])
    /// Set from the first refused connection until accepting resumes: one count and one log line per pause.
    private let limitReached = NIOLockedValueBox(false)
    private let logger = Logger(label: "weir.listener")

    public init(fingerprint: String, stage: String = "listener", maxConnections: Int? = nil, agentBudget: ConnectionBudget? = nil) {
        self.fingerprint = fingerprint
        self.stage = stage
        budgets = [ConnectionBudget(limit: maxConnections)] + (agentBudget.map { [$0] } ?? [])
    }

    public var channel: (any Channel)? { boundChannel.withLockedValue { $0 } }

    /// UDP sessions open on all of a datagram listener's sockets, against the current owner's connector's
    /// `max_sessions` (set with the owner).
    let datagramSessions = ConnectionBudget(limit: nil)

    public var currentOwner: ListenerOwner? { owner.withLockedValue { $0 } }

    /// Makes `newOwner` receive what the socket accepts from now on; returns the previous owner.
    @discardableResult
    public func setOwner(_ newOwner: ListenerOwner?) -> ListenerOwner? {
        if case .datagram(let forwarder) = newOwner { datagramSessions.setLimit(forwarder.connector.maxSessions) }
        return owner.withLockedValue { current in
            defer { current = newOwner }
            return current
        }
    }

    /// Binds with `listener`, routing to whichever owner is current. A plain listener's socket is the relay
    /// threads' (see StreamRelayThread); others accept through NIO.
    public func bind(stream listener: any StreamListener, group: any EventLoopGroup) async throws {
        if let plain = listener as? any PlainStreamListener { return try bind(plain: plain, group: group) }
        let channel = try await listener.bind(group: group) { [self] child in
            if case .stream(let forwarder) = currentOwner, admit(child) {
                forwarder.accept(child)
            } else {
                child.close(promise: nil)
            }
            return child.eventLoop.makeSucceededVoidFuture()
        }
        boundChannel.withLockedValue { $0 = channel }
        try await channel.eventLoop.submit { [self] in
            let report = AcceptFailureReport(
                failed: { [self] error, first in acceptFailed(error, first: first) },
                recovered: { [self] in acceptingAgain() })
            try channel.pipeline.syncOperations.addHandler(report, position: .first)
        }.get()
    }

    /// A plain listener's socket, accepted on by every relay thread.
    private struct RelayedSocket {
        let fd: Int32
        let address: String
        let engine: StreamRelayEngine
        /// The loops connections of other owners are handed to, in turn (as a NIO server spreads its children):
        /// which relay thread accepts is up to the kernel, and one thread may take most of them.
        let group: any EventLoopGroup
    }

    private let relayedSocket = NIOLockedValueBox<RelayedSocket?>(nil)
    /// Whether accepting is failing for lack of descriptors (relay threads).
    private let acceptFailing = NIOLockedValueBox(false)

    private func bind(plain listener: any PlainStreamListener, group: any EventLoopGroup) throws {
        let engine = try StreamRelayEngine.shared.get()
        let address = try listener.address.socketAddress()
        let fd = address.withSockAddr { weir_stream_listen($0, socklen_t($1), Int32(listener.backlog)) }
        guard fd >= 0 else { throw IOError(errnoCode: -fd, reason: "bind") }
        let bound = DatagramSocket.localAddress(fd).map { "\($0)" } ?? "\(address)"
        relayedSocket.withLockedValue { $0 = RelayedSocket(fd: fd, address: bound, engine: engine, group: group) }
        engine.listen(fd, socket: self)
        engine.setAccepting(fd, socket: self, true)
    }

    /// A connection a relay thread accepted: relayed there when the owner is a plain forward, else handed to
    /// NIO as a channel on the thread's loop. Runs on the relay thread.
    func accepted(_ fd: Int32, by thread: StreamRelayThread, now: UInt64) {
        let recovered = acceptFailing.withLockedValue { failing in
            defer { failing = false }
            return failing
        }
        if recovered { acceptingAgain() }
        guard let relayed = relayedSocket.withLockedValue({ $0 }), case .stream(let forwarder) = currentOwner, let budgets = takeBudgets() else {
            Glibc.close(fd)
            return
        }
        let release: @Sendable () -> Void = { budgets.forEach { $0.release() } }
        if let targets = forwarder.direct {
            relayed.engine.relay(fd, accepting: thread, forwarder: forwarder, targets: targets, releaseBudgets: release, now: now)
            return
        }
        ClientBootstrap(group: relayed.group.next())
            .channelOption(.autoRead, value: false)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.recvAllocator, value: StreamForwarder.receiveAllocator)
            .channelInitializer { channel in
                forwarder.accept(channel)
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .withConnectedSocket(fd)
            .whenComplete { result in
                switch result {
                case .success(let channel): channel.closeFuture.whenComplete { _ in release() }
                case .failure: release()
                }
            }
    }

    /// Accepting failed on a relay thread (out of descriptors or memory): the listener pauses for a moment.
    func acceptFailed(_ error: IOError) {
        let first = acceptFailing.withLockedValue { failing in
            defer { failing = true }
            return !failing
        }
        acceptFailed(error, first: first)
    }

    private func acceptFailed(_ error: IOError, first: Bool) {
        count("accept_failed")
        if first {
            logger.error(
                "accepting failed; pausing accepts briefly and retrying",
                metadata: [
                    "pipeline": "\(pipelineName)", "stage": "\(stage)", "reason": "accept_failed", "address": "\(address)",
                    "error": "\(error)",
                ])
        }
        // epoll reports the waiting connection again at once: retrying now would spin.
        setPaused(.descriptors, true)
        let loop = channel?.eventLoop ?? relayedSocket.withLockedValue { $0?.group.next() }
        loop?.scheduleTask(in: AcceptFailureReport.pause) { [self] in setPaused(.descriptors, false) }
    }

    private func acceptingAgain() {
        logger.notice("accepting again", metadata: ["pipeline": "\(pipelineName)", "stage": "\(stage)", "address": "\(address)"])
    }

    /// Takes a place in every budget for `child` (given back when it closes), or none: a spent budget
    /// refuses it. Accepting pauses as soon as a budget is spent, so the next client waits in the backlog.
    private func admit(_ child: any Channel) -> Bool {
        guard let taken = takeBudgets() else { return false }
        child.closeFuture.whenComplete { _ in taken.forEach { $0.release() } }
        return true
    }

    /// A place in every budget, or none (and accepting paused) when one is spent.
    private func takeBudgets() -> [ConnectionBudget]? {
        var taken: [ConnectionBudget] = []
        for budget in budgets {
            guard budget.take() else {
                taken.forEach { $0.release() }
                pauseForLimit()
                return nil
            }
            taken.append(budget)
        }
        if budgets.contains(where: \.isFull) { pauseForLimit() }
        return taken
    }

    /// Why accepting is paused; it resumes when no reason is left.
    private enum PauseReason: Hashable {
        /// A budget is spent (`connection_limit`).
        case connectionLimit
        /// The process or system ran out of descriptors (`accept_failed`).
        case descriptors
    }

    /// Pauses or resumes on the socket's own loop, so the reasons and the socket's reading change together
    /// and in order. Accepting is off while any reason holds.
    private func setPaused(_ reason: PauseReason, _ on: Bool) {
        if let relayed = relayedSocket.withLockedValue({ $0 }) {
            // Requests reach each relay thread in the order they were made, so the last one wins.
            pauses.withLockedValue { reasons in
                let before = !reasons.isEmpty
                if on { reasons.insert(reason) } else { reasons.remove(reason) }
                if before != !reasons.isEmpty { relayed.engine.setAccepting(relayed.fd, socket: self, reasons.isEmpty) }
            }
            return
        }
        guard let channel else { return }
        channel.eventLoop.execute { [self] in
            let (wasPaused, isPaused) = pauses.withLockedValue { reasons in
                let before = !reasons.isEmpty
                if on { reasons.insert(reason) } else { reasons.remove(reason) }
                return (before, !reasons.isEmpty)
            }
            if wasPaused != isPaused { try? channel.syncOptions?.setOption(.autoRead, value: !isPaused) }
        }
    }

    /// Stops accepting until every budget has room (counted once per pause as `connection_limit`).
    private func pauseForLimit() {
        guard channel != nil || relayedSocket.withLockedValue({ $0 }) != nil else { return }
        let first = limitReached.withLockedValue { reached in
            defer { reached = true }
            return !reached
        }
        guard first else { return }
        count("connection_limit")
        logger.warning(
            "connection limit reached; accepting paused until a connection ends",
            metadata: [
                "pipeline": "\(pipelineName)", "stage": "\(stage)", "reason": "connection_limit", "address": "\(address)",
                "limits": "\(budgets.map { $0.limit.map(String.init) ?? "none" })",
            ])
        setPaused(.connectionLimit, true)
        resumeWhenRoom()
    }

    /// Resumes once no budget is spent (waiting on each spent one in turn).
    private func resumeWhenRoom() {
        for budget in budgets where budget.waitForRoom(ObjectIdentifier(self), { [self] in resumeWhenRoom() }) {
            return
        }
        limitReached.withLockedValue { $0 = false }
        setPaused(.connectionLimit, false)
    }

    /// The bound address, for log lines.
    private var address: String { channel?.localAddress.map { "\($0)" } ?? relayedSocket.withLockedValue { $0?.address } ?? "?" }

    /// The pipeline now owning the socket, for log lines.
    private var pipelineName: String {
        switch currentOwner {
        case .stream(let forwarder): forwarder.pipeline
        default: "?"
        }
    }

    private func count(_ reason: String) {
        if case .stream(let forwarder) = currentOwner { forwarder.metrics.error(stage: stage, reason: reason) }
    }

    /// Starts a listener that dials out; what it connects goes to whichever owner is current.
    public func start(dialing listener: any DialingStreamListener, group: any EventLoopGroup) {
        let dialer = listener.startDialing(group: group) { [self] connection in
            if case .stream(let forwarder) = currentOwner {
                forwarder.accept(connection)
            } else {
                connection.close(promise: nil)
            }
        }
        self.dialer.withLockedValue { $0 = dialer }
    }

    /// Binds the listener's sockets, one per event loop of `group`, each relayed by a thread of its own.
    public func bind(datagram listener: any DatagramListener, group: any EventLoopGroup) async throws {
        let loops = Array(group.makeIterator())
        let sockets = try DatagramSocket.bind(listener.address.socketAddress(), count: loops.count, receiveBuffer: listener.receiveBuffer, nonBlocking: true)
        var relays: [DatagramRelayLoop] = []
        for (fd, loop) in zip(sockets, loops) {
            do {
                relays.append(try DatagramRelayLoop(listening: fd, socket: self, eventLoop: loop))
            } catch {
                for relay in relays { await relay.close() }
                sockets.dropFirst(relays.count).forEach { _ = Glibc.close($0) }
                throw error
            }
        }
        relays.forEach { $0.start() }
        datagramRelays.withLockedValue { $0 = relays }
    }

    public func close() async {
        dialer.withLockedValue { $0 }?.stop()
        // Taken out first: a pause or resume from now on has no socket to act on.
        if let relayed = relayedSocket.withLockedValue({ relayed in
            defer { relayed = nil }
            return relayed
        }) {
            await relayed.engine.stopListening(relayed.fd)
            Glibc.close(relayed.fd)
        }
        for relay in datagramRelays.withLockedValue({ $0 }) { await relay.close() }
        guard let channel else { return }
        try? await channel.close()
    }
}

/// Who receives what a listener socket accepts.
public enum ListenerOwner: Sendable {
    case stream(StreamForwarder)
    case datagram(DatagramForwarder)
}
