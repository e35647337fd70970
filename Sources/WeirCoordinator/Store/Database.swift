import Logging
import NIOCore
import NIOPosix
import PostgresKit
import SQLKit
import SQLiteKit
import WeirCore
#if canImport(Glibc)
import Glibc
#endif

/// The coordinator's database: one SQLite file, or a PostgreSQL shared by several instances. Every query
/// goes through SQLKit, so the store's SQL is written once for both.
final class CoordinatorDatabase: Sendable {
    let sql: any SQLDatabase
    let isPostgres: Bool
    private let close: @Sendable () async throws -> Void

    private init(sql: any SQLDatabase, isPostgres: Bool, close: @escaping @Sendable () async throws -> Void) {
        self.sql = sql
        self.isPostgres = isPostgres
        self.close = close
    }

    static func open(_ database: CoordinatorConfig.Database, group: any EventLoopGroup, logger: Logger) async throws -> CoordinatorDatabase {
        switch database {
        case .sqlite(let path):
            // The database holds credential hashes and relay keys: 0600 before SQLite creates it, which gives
            // its -wal and -shm files the same mode; files left 0644 by older versions are corrected.
            let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
            if fd >= 0 { Glibc.close(fd) }
            for file in [path, path + "-wal", path + "-shm"] { PrivateFile.restrict(file) }
            // One connection: SQLite takes one writer at a time anyway, and one connection never sees "busy".
            let connection = try await SQLiteConnection.open(storage: .file(path: path), threadPool: .singleton, logger: logger, on: group.next())
            let sql = connection.sql(queryLogLevel: .trace)
            try await sql.raw("PRAGMA journal_mode = WAL").run()
            try await sql.raw("PRAGMA synchronous = NORMAL").run()
            return CoordinatorDatabase(sql: sql, isPostgres: false) { try await connection.close() }
        case .postgres(let url):
            let configuration = try SQLPostgresConfiguration(url: url)
            let pool = EventLoopGroupConnectionPool(
                source: PostgresConnectionSource(sqlConfiguration: configuration), maxConnectionsPerEventLoop: 4,
                pruneInterval: .seconds(60), logger: logger, on: group)
            let sql = pool.database(logger: logger).sql(queryLogLevel: .trace)
            do {
                _ = try await sql.raw("SELECT 1").all()
            } catch {
                try? await pool.shutdownAsync()
                throw error
            }
            let owner = PoolOwner(pool: pool)
            return CoordinatorDatabase(sql: sql, isPostgres: true) { try await owner.pool.shutdownAsync() }
        }
    }

    func shutdown() async { try? await close() }

    /// Creates the tables when missing. Columns only ever get added, so an older database opens in a newer coordinator.
    func migrate() async throws {
        let statements = [
            """
            CREATE TABLE IF NOT EXISTS api_tokens (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, secret_hash TEXT NOT NULL UNIQUE,
                created_at DOUBLE PRECISION NOT NULL)
            """,
            """
            CREATE TABLE IF NOT EXISTS enrollment_tokens (
                id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL UNIQUE, labels TEXT NOT NULL, expires_at DOUBLE PRECISION,
                uses_left INTEGER, created_at DOUBLE PRECISION NOT NULL)
            """,
            """
            CREATE TABLE IF NOT EXISTS agents (
                id TEXT PRIMARY KEY, credential_hash TEXT NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,
                enrollment_labels TEXT NOT NULL DEFAULT '{}', announced_labels TEXT NOT NULL DEFAULT '{}',
                operator_labels TEXT NOT NULL DEFAULT '{}', version TEXT NOT NULL DEFAULT '', facts TEXT NOT NULL DEFAULT '{}',
                enrolled_at DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
                desired_version TEXT, applied_version TEXT, nacked_version TEXT, last_error TEXT,
                report TEXT NOT NULL DEFAULT '{}')
            """,
            """
            CREATE TABLE IF NOT EXISTS pipelines (
                name TEXT PRIMARY KEY, document TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)
            """,
            """
            CREATE TABLE IF NOT EXISTS lists (
                name TEXT PRIMARY KEY, entries TEXT NOT NULL, updated_at DOUBLE PRECISION NOT NULL)
            """,
            """
            CREATE TABLE IF NOT EXISTS relays (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)
            """,
            """
            CREATE TABLE IF NOT EXISTS vpn_servers (name TEXT PRIMARY KEY, spec TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)
            """,
            "CREATE TABLE IF NOT EXISTS vpn_plans (name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS vpn_users (name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
            """
            CREATE TABLE IF NOT EXISTS vpn_devices (
                vpn_user TEXT NOT NULL, name TEXT NOT NULL, server TEXT NOT NULL, spec TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (vpn_user, name))
            """,
            """
            CREATE TABLE IF NOT EXISTS vpn_addresses (
                server TEXT NOT NULL, address TEXT NOT NULL, vpn_user TEXT NOT NULL, device TEXT NOT NULL, PRIMARY KEY (server, address))
            """,
            """
            CREATE TABLE IF NOT EXISTS assignments (
                id TEXT PRIMARY KEY, pipeline TEXT NOT NULL, agent TEXT, selector TEXT, created_at DOUBLE PRECISION NOT NULL)
            """,
            """
            CREATE TABLE IF NOT EXISTS console_accounts (
                name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL, failed_logins INTEGER NOT NULL DEFAULT 0,
                locked_until DOUBLE PRECISION, created_at DOUBLE PRECISION NOT NULL, password_changed_at DOUBLE PRECISION NOT NULL,
                totp_secret TEXT, totp_pending TEXT, totp_last_step BIGINT, recovery_codes TEXT NOT NULL DEFAULT '[]')
            """,
            """
            CREATE TABLE IF NOT EXISTS console_sessions (
                id_hash TEXT PRIMARY KEY, account TEXT NOT NULL, csrf TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
                last_seen DOUBLE PRECISION NOT NULL, address TEXT NOT NULL, user_agent TEXT NOT NULL, stage TEXT NOT NULL DEFAULT 'full')
            """,
            "CREATE INDEX IF NOT EXISTS console_sessions_account ON console_sessions (account)",
            "CREATE TABLE IF NOT EXISTS console_settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            """
            CREATE TABLE IF NOT EXISTS traffic (
                resolution TEXT NOT NULL, bucket BIGINT NOT NULL, agent TEXT NOT NULL, pipeline TEXT NOT NULL,
                bytes_in DOUBLE PRECISION NOT NULL, bytes_out DOUBLE PRECISION NOT NULL, connections DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (resolution, bucket, agent, pipeline))
            """,
            """
            CREATE TABLE IF NOT EXISTS traffic_addresses (
                resolution TEXT NOT NULL, bucket BIGINT NOT NULL, agent TEXT NOT NULL, pipeline TEXT NOT NULL, address TEXT NOT NULL,
                bytes_in DOUBLE PRECISION NOT NULL, bytes_out DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (resolution, bucket, agent, pipeline, address))
            """,
            """
            CREATE TABLE IF NOT EXISTS audit_log (
                id TEXT PRIMARY KEY, time DOUBLE PRECISION NOT NULL, actor TEXT NOT NULL, source TEXT NOT NULL, action TEXT NOT NULL,
                outcome TEXT NOT NULL, detail TEXT NOT NULL)
            """,
        ]
        for statement in statements { try await sql.raw(SQLQueryString(statement)).run() }
        try await addColumn(table: "lists", column: "kind", definition: "TEXT NOT NULL DEFAULT 'destinations'")
        try await addColumn(table: "agents", column: "metrics_address", definition: "TEXT")
    }

    /// Adds a column a database made by an older coordinator lacks. PostgreSQL says IF NOT EXISTS itself (two
    /// instances may start at once); SQLite has one writer, which asks first.
    private func addColumn(table: String, column: String, definition: String) async throws {
        if isPostgres {
            let statement = "ALTER TABLE \(table) ADD COLUMN IF NOT EXISTS \(column) \(definition)"
            try await sql.raw(SQLQueryString(statement)).run()
            return
        }
        let pragma = "PRAGMA table_info(\(table))", statement = "ALTER TABLE \(table) ADD COLUMN \(column) \(definition)"
        let columns = try await sql.raw(SQLQueryString(pragma)).all().compactMap { try? $0.decode(column: "name", as: String.self) }
        guard !columns.contains(column) else { return }
        try await sql.raw(SQLQueryString(statement)).run()
    }
}

/// AsyncKit's pool guards its state with a lock but is not marked Sendable; only its shutdown crosses here.
private final class PoolOwner: @unchecked Sendable {
    let pool: EventLoopGroupConnectionPool<PostgresConnectionSource>
    init(pool: EventLoopGroupConnectionPool<PostgresConnectionSource>) { self.pool = pool }
}
