import Prometheus

/// The coordinator's own /metrics.
final class CoordinatorMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let agentsOnline: Gauge
    let agentsOffline: Gauge
    /// Online agents whose applied bundle is the desired one, is on its way, or was refused (NACK).
    let bundlesCurrent: Gauge
    let bundlesPending: Gauge
    let bundlesRefused: Gauge
    /// Agents with an open connection to this instance.
    let connectedAgents: Gauge
    let pushes: Counter
    let acks: Counter
    let nacks: Counter
    /// From sending a bundle to the agent's ACK of it.
    let pushLatency: DurationHistogram
    /// Live console pages (server-sent event streams) open on this instance.
    let consoleStreams: Gauge
    /// Client connections (agents, API, console) open now, and those closed because their opening (TLS
    /// handshake and first request head) did not complete within handshake_timeout.
    let connectionsOpen: Gauge
    let handshakeTimeouts: Counter

    init() {
        let agentsHelp = "Registered agents by state (online: heartbeat within offline_after)."
        agentsOnline = registry.makeGauge(name: "weir_coordinator_agents", labels: [("state", "online")], help: agentsHelp)
        agentsOffline = registry.makeGauge(name: "weir_coordinator_agents", labels: [("state", "offline")], help: agentsHelp)
        let bundlesHelp = "Online agents by their bundle: current (the desired one applied), pending (not yet applied), refused (NACK)."
        bundlesCurrent = registry.makeGauge(name: "weir_coordinator_agent_bundles", labels: [("state", "current")], help: bundlesHelp)
        bundlesPending = registry.makeGauge(name: "weir_coordinator_agent_bundles", labels: [("state", "pending")], help: bundlesHelp)
        bundlesRefused = registry.makeGauge(name: "weir_coordinator_agent_bundles", labels: [("state", "refused")], help: bundlesHelp)
        connectedAgents = registry.makeGauge(
            name: "weir_coordinator_connected_agents", labels: [], help: "Agents connected to this coordinator instance.")
        pushes = registry.makeCounter(name: "weir_coordinator_pushes_total", labels: [], help: "Bundles sent to agents.")
        acks = registry.makeCounter(name: "weir_coordinator_acks_total", labels: [], help: "Bundles agents applied (ACK).")
        nacks = registry.makeCounter(name: "weir_coordinator_nacks_total", labels: [], help: "Bundles agents refused (NACK).")
        pushLatency = registry.makeDurationHistogram(
            name: "weir_coordinator_push_latency_seconds", labels: [],
            buckets: [.milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
                      .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10)],
            help: "Time from sending a bundle to the agent's ACK.")
        consoleStreams = registry.makeGauge(
            name: "weir_coordinator_console_live_streams", labels: [], help: "Live console pages (event streams) open on this coordinator instance.")
        connectionsOpen = registry.makeGauge(
            name: "weir_coordinator_connections_open", labels: [], help: "Client connections (agents, API, console) open on this coordinator instance.")
        handshakeTimeouts = registry.makeCounter(
            name: "weir_coordinator_connection_errors_total", labels: [("reason", "handshake_timeout")],
            help: "Client connections closed by the coordinator, by reason (handshake_timeout: no complete TLS handshake and request head in time).")
    }

    /// The coordinator's own certificate, under the agents' metric and labels (stage "coordinator").
    func certificateExpiry(file: String) -> Gauge {
        registry.makeGauge(
            name: "weir_tls_certificate_expiry_timestamp_seconds", labels: [("stage", "coordinator"), ("file", file)],
            help: "When a certificate the coordinator loaded expires (Unix time; the earliest in the file).")
    }

    func render() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
