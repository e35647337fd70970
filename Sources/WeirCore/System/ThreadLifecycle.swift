import CWeirSystem
import Foundation
import NIOConcurrencyHelpers

/// A thread of its own for a loop that waits in system calls (the UDP relay, dns.filter's answer loops), and its
/// life: started, asked to stop, ended — with whoever waits for the end.
public final class ThreadLifecycle: Sendable {
    private struct State {
        var started = false
        var stopping = false
        var ended = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Runs `body` on a new thread named `name`.
    public func start(name: String, _ body: @escaping @Sendable () -> Void) {
        state.withLockedValue { $0.started = true }
        let thread = Thread { [self] in
            // The kernel's name (top, /proc/…/comm), at most 15 bytes; Foundation's name is its own.
            weir_name_thread(name)
            body()
            let waiters = state.withLockedValue { state -> [CheckedContinuation<Void, Never>] in
                state.ended = true
                defer { state.waiters = [] }
                return state.waiters
            }
            for waiter in waiters { waiter.resume() }
        }
        thread.name = name
        thread.start()
    }

    /// Whether the loop was asked to stop (it checks after every wait).
    public var stopping: Bool { state.withLockedValue { $0.stopping } }

    /// Asks the loop to stop; returns whether the thread was started (else there is nothing to wait for).
    @discardableResult
    public func requestStop() -> Bool {
        state.withLockedValue { state in
            state.stopping = true
            return state.started
        }
    }

    /// Returns once the thread's body has returned, at once when it never started.
    public func waitForEnd() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLockedValue { state -> Bool in
                let done = state.ended || !state.started
                if !done { state.waiters.append(continuation) }
                return done
            }
            if done { continuation.resume() }
        }
    }
}
