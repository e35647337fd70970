import Logging
import NIOCore

/// What one datagram pipeline does with a client's datagrams: its filters, connector and metrics.
public final class DatagramForwarder: Sendable {
    public let pipeline: String
    let filters: [any DatagramFilter]
    let connector: any DatagramConnector
    let connectorType: String
    let metrics: PipelineMetrics
    let logger: Logger

    public init(
        pipeline: String, filters: [any DatagramFilter], connector: any DatagramConnector, connectorType: String,
        metrics: PipelineMetrics, logger: Logger
    ) {
        self.pipeline = pipeline
        self.filters = filters
        self.connector = connector
        self.connectorType = connectorType
        self.metrics = metrics
        self.logger = logger
    }

    func sessionFilters(for connection: ConnectionInfo) -> [any DatagramSessionFilter] {
        filters.map { $0.sessionFilter(for: connection) }
    }
}
