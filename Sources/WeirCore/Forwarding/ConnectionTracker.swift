import NIOConcurrencyHelpers
import NIOCore

/// The open client channels of one pipeline, so a stop can wait for them to finish and then close the rest.
public final class ConnectionTracker: Sendable {
    private struct State {
        var open: [ObjectIdentifier: any Channel] = [:]
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

    public var count: Int { state.withLockedValue { $0.open.count } }

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
        let remaining = state.withLockedValue { Array($0.open.values) }
        for channel in remaining { channel.close(promise: nil) }
        for channel in remaining { try? await channel.closeFuture.get() }
    }
}
