/// What every stream listener bounds for the connections it accepts.
public struct ConnectionOptions: Sendable, Equatable {
    /// Open connections at most; at the limit the listener stops accepting until one ends. nil: no limit.
    public var maxConnections: Int?
    /// A forwarded connection on which nothing moved for this long is closed. nil: never.
    public var idleTimeout: Duration?

    public init(maxConnections: Int? = nil, idleTimeout: Duration? = nil) {
        self.maxConnections = maxConnections
        self.idleTimeout = idleTimeout
    }

    public static let docs = [
        OptionDoc("max_connections", "integer", default: "no limit", "Open connections at most; at the limit the listener stops accepting (clients wait in the backlog) until one ends."),
        OptionDoc("idle_timeout", "duration", default: "none", "Close a connection once nothing moved in either direction for this long."),
    ]

    /// The docs of `handshake_timeout`, for stages whose clients negotiate or handshake.
    public static let handshakeTimeoutDoc = OptionDoc(
        "handshake_timeout", "duration", default: "10s", "Close a connection whose client has not completed its opening (greeting, request, handshake) this long after connecting.")

    /// Reads `max_connections` and `idle_timeout`; nil after reporting an error.
    public static func decode(_ options: ConfigMapping) -> ConnectionOptions? {
        let maxConnections = options.optional("max_connections").map { $0.int(in: 1...10_000_000) }
        let idleTimeout = options.optional("idle_timeout").map { $0.duration(atLeast: minimumTimeout) }
        if let maxConnections, maxConnections == nil { return nil }
        if let idleTimeout, idleTimeout == nil { return nil }
        return ConnectionOptions(maxConnections: maxConnections ?? nil, idleTimeout: idleTimeout ?? nil)
    }

    /// The shortest `idle_timeout` or `handshake_timeout` accepted.
    static let minimumTimeout: Duration = .milliseconds(100)

    /// Reads `handshake_timeout` (default 10 s); nil after reporting an error.
    public static func handshakeTimeout(_ options: ConfigMapping) -> Duration? {
        handshakeTimeout(options.optional("handshake_timeout"))
    }

    /// A `handshake_timeout` value already looked up (stages that take it on one side only); the default when
    /// absent, nil after reporting an error.
    public static func handshakeTimeout(_ value: ConfigValue?) -> Duration? {
        guard let value else { return OpeningStep.defaultTimeout }
        return value.duration(atLeast: minimumTimeout)
    }
}
