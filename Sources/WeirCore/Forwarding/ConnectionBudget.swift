import Glibc
import NIOConcurrencyHelpers
import NIOCore

/// How many connections may be open at once: one budget per listener (`max_connections`) and one for the
/// whole agent (`agent.max_connections`). A listener whose budget is spent stops accepting — new clients wait
/// in the kernel's backlog, as with HAProxy's maxconn — and resumes when a connection ends.
public final class ConnectionBudget: Sendable {
    private struct State {
        var limit: Int?
        var open = 0
        /// Listeners waiting for room, by identity, each with how to resume it.
        var waiting: [ObjectIdentifier: @Sendable () -> Void] = [:]
    }

    private let state: NIOLockedValueBox<State>

    /// `limit` nil: no limit.
    public init(limit: Int?) { state = NIOLockedValueBox(State(limit: limit)) }

    public var limit: Int? { state.withLockedValue { $0.limit } }
    public var isFull: Bool { state.withLockedValue { state in state.limit.map { state.open >= $0 } ?? false } }

    /// Changes the limit (a reload); listeners waiting for room get it if there is some now.
    public func setLimit(_ limit: Int?) {
        state.withLockedValue { $0.limit = limit }
        wakeIfRoom()
    }

    /// Takes a place, or returns false when there is none.
    public func take() -> Bool {
        state.withLockedValue { state in
            if let limit = state.limit, state.open >= limit { return false }
            state.open += 1
            return true
        }
    }

    /// Gives a place back; listeners waiting for room resume.
    public func release() {
        state.withLockedValue { $0.open -= 1 }
        wakeIfRoom()
    }

    /// When the budget is spent, registers `resume` to be called once a place is given back and returns
    /// true; when there is room, returns false. Checked and registered under one lock, so a place given back
    /// in between is not missed. One registration per `waiter`.
    public func waitForRoom(_ waiter: ObjectIdentifier, _ resume: @escaping @Sendable () -> Void) -> Bool {
        state.withLockedValue { state in
            guard let limit = state.limit, state.open >= limit else { return false }
            state.waiting[waiter] = resume
            return true
        }
    }

    private func wakeIfRoom() {
        let resumes = state.withLockedValue { state -> [@Sendable () -> Void] in
            if let limit = state.limit, state.open >= limit { return [] }
            defer { state.waiting = [:] }
            return Array(state.waiting.values)
        }
        for resume in resumes { resume() }
    }
}

/// On a listening socket: reports accepting that fails because the process or the system is out of
/// descriptors (or memory), once per failure and whether it starts an episode, and the first accept after one.
/// The listener pauses accepting for a moment on each (`pause`): epoll reports the waiting connection again at
/// once, and NIO, whose read stays pending after a failed accept, would retry at full CPU. Existing
/// connections are untouched; accepting resumes by itself.
public final class AcceptFailureReport: ChannelInboundHandler, @unchecked Sendable {
    public typealias InboundIn = NIOAny

    private let failed: @Sendable (IOError, _ firstOfEpisode: Bool) -> Void
    private let recovered: @Sendable () -> Void
    private var failing = false

    /// How long accepting pauses after such a failure.
    public static let pause = TimeAmount.milliseconds(250)

    public static func isResourceShortage(_ error: IOError) -> Bool {
        [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode)
    }

    public init(failed: @escaping @Sendable (IOError, Bool) -> Void, recovered: @escaping @Sendable () -> Void) {
        self.failed = failed
        self.recovered = recovered
    }

    /// A report that only pauses `listening` for `pause` after each failure: for listeners whose failures are
    /// not counted or logged (the metrics endpoint).
    public static func pausing(_ listening: any Channel) -> AcceptFailureReport {
        AcceptFailureReport(
            failed: { _, _ in
                listening.setOption(.autoRead, value: false).whenSuccess {
                    listening.eventLoop.scheduleTask(in: pause) { listening.setOption(.autoRead, value: true).whenFailure { _ in } }
                }
            },
            recovered: {})
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if failing {
            failing = false
            recovered()
        }
        context.fireChannelRead(data)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? IOError, Self.isResourceShortage(error) {
            failed(error, !failing)
            failing = true
            return
        }
        context.fireErrorCaught(error)
    }
}
