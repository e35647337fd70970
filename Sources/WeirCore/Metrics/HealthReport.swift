import NIOConcurrencyHelpers

/// What `/healthz` reports: the agent is healthy while no part of it has a problem. Each part (the coordinator
/// connection, a stage) sets or clears its own entry, so one recovering does not hide another.
public final class HealthReport: Sendable {
    private let problems = NIOLockedValueBox<[String: String]>([:])

    public init() {}

    /// Records `message` for `source`, or clears it with nil.
    public func set(_ source: String, _ message: String?) {
        problems.withLockedValue { $0[source] = message }
    }

    /// "source: message" lines, sorted; empty when healthy.
    public var lines: [String] {
        problems.withLockedValue { $0.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" } }
    }
}
