import Foundation
import Logging
import WeirCore

/// `weir coordinator`'s settings file.
public struct CoordinatorConfig: Sendable {
    public enum Database: Sendable, Equatable {
        /// One file; one coordinator instance.
        case sqlite(path: String)
        /// A `postgres://` URL; any number of instances on the same database.
        case postgres(url: String)
    }

    public var listen: BindAddress
    public var certificatePath: String
    public var keyPath: String
    public var stateDirectory: String
    public var database: Database
    /// How often agents send a heartbeat.
    public var heartbeatInterval: Duration
    /// An agent whose last heartbeat is older than this is offline.
    public var offlineAfter: Duration
    /// An agent offline longer than this is removed from the registry.
    public var retention: Duration
    /// Where the first admin API token is written when the database has no token yet.
    public var adminTokenFile: String
    /// The key that seals generated secrets in the database; the same file on every instance of one database.
    public var secretsKeyFile: String
    /// The largest request body the API reads; larger ones get 413.
    public var maxRequestBody: Int
    /// How long a new connection may take to complete its TLS handshake and first request head.
    public var handshakeTimeout: Duration = .seconds(10)
    /// How long a keep-alive connection may wait for its next request (or a request for its next part).
    public var idleTimeout: Duration = .seconds(60)
    /// Client connections open at once; more are closed at accept. nil: the descriptor limit less a reserve
    /// for the database, files and listeners (`CoordinatorConfig.connectionLimit(descriptors:)`).
    public var maxConnections: Int?

    /// Descriptors kept for everything but client connections when `max_connections` is not set.
    static let descriptorReserve = 256

    /// `max_connections`, or what the descriptor limit leaves once the reserve is set aside.
    public func connectionLimit(descriptors: Int) -> Int {
        maxConnections ?? max(descriptors - Self.descriptorReserve, 64)
    }
    /// The web console's sign-in and session settings (`coordinator.console`).
    public var console = ConsoleSettings()
    public var logLevel: Logger.Level
    public var logFormat: AgentConfig.LogFormat

    public static let defaultPath = "/etc/weir/coordinator.yaml"

    public static func load(path: String) throws(ConfigErrors) -> CoordinatorConfig {
        let sink = DiagnosticSink()
        guard let root = ConfigLoader.parseFile(path, sink: sink)?.mapping else { throw ConfigErrors(sink.diagnostics) }
        var config = CoordinatorConfig(
            listen: try! BindAddress.parse("0.0.0.0:8443"), certificatePath: "", keyPath: "", stateDirectory: "/var/lib/weir-coordinator",
            database: .sqlite(path: ""), heartbeatInterval: .seconds(10), offlineAfter: .seconds(30), retention: .seconds(7 * 86400),
            adminTokenFile: "", secretsKeyFile: "", maxRequestBody: 16 << 20, logLevel: .info, logFormat: .text)
        var databaseText: String?
        var adminTokenFile: String?
        var secretsKeyFile: String?
        if let section = root.required("coordinator")?.mapping {
            if let listen = section.optional("listen")?.parsed(BindAddress.parse) { config.listen = listen }
            if let dir = section.optional("state_dir")?.absolutePath { config.stateDirectory = dir }
            if let tls = section.required("tls")?.mapping {
                config.certificatePath = tls.required("certificate")?.string ?? ""
                config.keyPath = tls.required("key")?.string ?? ""
                tls.finish()
            }
            if let database = section.optional("database") {
                if let text = database.string {
                    if text == "sqlite" || text.hasPrefix("sqlite:") || text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
                        databaseText = text
                    } else {
                        database.error("\"\(text)\" is not a database: use sqlite, sqlite:/path/to/file.db or postgres://user:password@host:5432/name")
                    }
                }
            }
            if let value = section.optional("heartbeat_interval")?.duration(atLeast: .milliseconds(100)) { config.heartbeatInterval = value }
            if let value = section.optional("offline_after")?.duration(atLeast: .milliseconds(200)) { config.offlineAfter = value }
            if let value = section.optional("retention")?.duration(atLeast: .seconds(1)) { config.retention = value }
            adminTokenFile = section.optional("admin_token_file")?.string
            secretsKeyFile = section.optional("secrets_key_file")?.absolutePath
            if let value = section.optional("max_request_body")?.parsed(ByteSizeParser.parse) { config.maxRequestBody = value }
            if let value = section.optional("handshake_timeout")?.duration(atLeast: .milliseconds(100)) { config.handshakeTimeout = value }
            if let value = section.optional("idle_timeout")?.duration(atLeast: .seconds(1)) { config.idleTimeout = value }
            if let value = section.optional("max_connections")?.int(in: 1...10_000_000) { config.maxConnections = value }
            if let console = section.optional("console")?.mapping {
                if let value = console.optional("session_idle_timeout")?.duration(atLeast: .seconds(1)) { config.console.sessionIdleTimeout = value }
                if let value = console.optional("session_lifetime")?.duration(atLeast: .seconds(1)) { config.console.sessionLifetime = value }
                if let value = console.optional("lockout_after")?.int(in: 1...100) { config.console.lockoutAfter = value }
                if let value = console.optional("lockout_duration")?.duration(atLeast: .seconds(1)) { config.console.lockoutDuration = value }
                console.finish()
            }
            if let value = section.optional("offline_after"), config.offlineAfter <= config.heartbeatInterval {
                value.error("offline_after must be longer than heartbeat_interval (\(config.heartbeatInterval))")
            }
            section.finish()
        }
        ConfigLoader.readLog(root.optional("log"), level: &config.logLevel, format: &config.logFormat)
        root.finish()
        if sink.hasErrors { throw ConfigErrors(sink.diagnostics) }

        let state = config.stateDirectory as NSString
        switch databaseText {
        case nil, "sqlite": config.database = .sqlite(path: state.appendingPathComponent("coordinator.db"))
        case let text? where text.hasPrefix("sqlite:"): config.database = .sqlite(path: String(text.dropFirst("sqlite:".count)))
        case let text?: config.database = .postgres(url: text)
        }
        config.adminTokenFile = adminTokenFile ?? state.appendingPathComponent("admin.token")
        config.secretsKeyFile = secretsKeyFile ?? state.appendingPathComponent("secrets.key")
        return config
    }
}

/// `coordinator.console`: how long sessions live and how sign-in guessing is stopped.
public struct ConsoleSettings: Sendable {
    /// A session unused this long ends.
    public var sessionIdleTimeout: Duration = .seconds(30 * 60)
    /// A session ends this long after sign-in, used or not.
    public var sessionLifetime: Duration = .seconds(12 * 3600)
    /// Failed sign-ins in a row that lock an account …
    public var lockoutAfter = 5
    /// … for this long.
    public var lockoutDuration: Duration = .seconds(15 * 60)
    /// Failed sign-ins from one address, over all accounts, within `addressWindow` before it is refused.
    public var addressLimit = 20
    public var addressWindow: Duration = .seconds(10 * 60)

    public init() {}
}
