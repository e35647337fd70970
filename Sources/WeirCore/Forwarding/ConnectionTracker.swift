import NIOConcurrencyHelpers
import NIOCore

/// The open client connections of one pipeline — channels, and connections relayed on raw sockets — so a stop
/// can wait for them to finish and then close the rest.
public final class ConnectionTracker: Sendable {
    private struct State {
        var open: [ObjectIdentifier: any Channel] = [:]
        /// Relayed connections, each with how to ask its thread to close it.
        var relayed: [ObjectIdentifier: @Sendable () -> Void] = [:]
        var accepting = true
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Registers `channel` until it closes; false once the pipeline is stopping.
    public func admit(_ channel: any Channel) -> Bool {
        let id = ObjectIdentifier(channel)
        let admitted = state.withLockedValue { state in
            guard state.accepting else { return false }
            state.open[id] = channel
            return true
        }
        if admitted {
            channel.closeFuture.whenComplete { _ in
                self.state.withLockedValue { _ = $0.open.removeValue(forKey: id) }
            }
        }
        return admitted
    }

    /// Registers a relayed connection until `closed(relayed:)`; false once the pipeline is stopping.
    func admit(relayed id: ObjectIdentifier, close: @escaping @Sendable () -> Void) -> Bool {
        state.withLockedValue { state in
            guard state.accepting else { return false }
            state.relayed[id] = close
            return true
        }
    }

    func closed(relayed id: ObjectIdentifier) {
        state.withLockedValue { _ = $0.relayed.removeValue(forKey: id) }
    }

    public var count: Int { state.withLockedValue { $0.open.count + $0.relayed.count } }

    /// Refuses new connections, waits up to `grace` for open ones to end, then closes what is left.
    public func drain(grace: Duration) async {
        let open = state.withLockedValue { state in
            state.accepting = false
            return Array(state.open.values)
        }
        // A multiplexed carrier stops taking new streams (HTTP/2 GOAWAY) and closes once its streams end;
        // plain connections ignore the event.
        for channel in open { channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: grace)
        while count > 0, clock.now < deadline {
            try? await Task.sleep(for: .milliseconds(50))
        }
        let (channels, relayed) = state.withLockedValue { (Array($0.open.values), Array($0.relayed.values)) }
        for channel in channels { channel.close(promise: nil) }
        for close in relayed { close() }
        for channel in channels { try? await channel.closeFuture.get() }
        // A relay thread closes what it is asked to at its next wakeup.
        while count > 0 { try? await Task.sleep(for: .milliseconds(5)) }
    }
}
