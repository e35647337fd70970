import NIOConcurrencyHelpers

/// `weir_coordinator_connected` and `weir_coordinator_refused`, written only while the agent has a
/// coordinator configured: a standalone agent has no such series, so an alert on a disconnected agent
/// does not fire for agents that were never meant to connect.
public final class CoordinatorStatus: ScrapeCollector {
    static let connectedFamily = MetricFamily(
        "weir_coordinator_connected", .gauge, help: "1 while the agent is connected to its coordinator and welcomed, else 0.")
    static let refusedFamily = MetricFamily(
        "weir_coordinator_refused", .gauge,
        help: "1 when the coordinator's last answer refused this agent (credential revoked or not its own, enrollment token refused), else 0.")

    private struct State {
        var configured = false
        var connected = false
        var refused = false
    }

    private let state = NIOLockedValueBox(State())

    public init() {}

    /// Whether a coordinator is configured; not configured also clears the other two.
    public func setConfigured(_ configured: Bool) {
        state.withLockedValue { $0 = State(configured: configured) }
    }

    public func setConnected(_ connected: Bool) { state.withLockedValue { $0.connected = connected } }
    public func setRefused(_ refused: Bool) { state.withLockedValue { $0.refused = refused } }

    public func collect(into exposition: inout ExpositionWriter) {
        let current = state.withLockedValue { $0 }
        guard current.configured else { return }
        for (family, value) in [(Self.connectedFamily, current.connected), (Self.refusedFamily, current.refused)] {
            exposition.append(family, lines: Array("\(family.name) \(value ? 1 : 0)\n".utf8))
        }
    }
}
