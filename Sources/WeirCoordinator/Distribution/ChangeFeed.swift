import Logging
import NIOCore
import PostgresKit
import ServiceLifecycle
import SQLKit

/// Tells every coordinator instance that the desired state changed. On SQLite there is one instance and the
/// news stays in process; on PostgreSQL it goes out with NOTIFY and each instance LISTENs, so a change made
/// through one instance reaches agents connected to any other.
struct ChangeFeed: Sendable {
    static let channel = "weir_desired_state"

    let database: CoordinatorDatabase
    let distributor: Distributor

    func publish() async {
        await distributor.desiredStateChanged()
        guard database.isPostgres else { return }
        _ = try? await database.sql.raw("SELECT pg_notify(\(bind: Self.channel), '')").all()
    }
}

/// One dedicated connection that LISTENs, reconnecting (with a fresh refresh, in case something was missed)
/// whenever it drops.
struct PostgresChangeListener: Service, CustomStringConvertible {
    var description: String { "PostgresChangeListener" }

    let url: String
    let distributor: Distributor
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown { await listen() }
    }

    private func listen() async {
        var delay = Duration.milliseconds(200)
        while !Task.isCancelled {
            do {
                let configuration = try SQLPostgresConfiguration(url: url).coreConfiguration
                let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
                defer { Task { try? await connection.close() } }
                let notifications = try await connection.listen(ChangeFeed.channel)
                delay = .milliseconds(200)
                await distributor.desiredStateChanged()
                for try await _ in notifications { await distributor.desiredStateChanged() }
            } catch is CancellationError {
                return
            } catch {
                if Task.isCancelled { return }
                logger.warning("LISTEN connection to PostgreSQL lost; reconnecting", metadata: ["error": "\(error)", "in": "\(delay)"])
            }
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(5))
        }
    }
}
