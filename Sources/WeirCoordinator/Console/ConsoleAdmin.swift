import Foundation
import Logging
import NIOPosix

/// `weir coordinator admin …`: console accounts managed on the coordinator's host, through its database
/// directly (for the first administrator, before anyone can sign in, and for a locked-out one).
public enum ConsoleAdmin {
    public struct AccountLine: Sendable {
        public let name: String
        public let role: String
        public let locked: Bool
        public let sessions: Int
    }

    public enum Failure: Error, CustomStringConvertible {
        case message(String)
        public var description: String { if case .message(let text) = self { return text }; return "" }
    }

    private static func withStore<T: Sendable>(_ config: CoordinatorConfig, _ body: (ConsoleStore, AuditLog) async throws -> T) async throws -> T {
        var logger = Logger(label: "weir-coordinator-admin")
        logger.logLevel = .warning
        let database = try await CoordinatorDatabase.open(config.database, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
        do {
            try await database.migrate()
            let secrets = try SecretBox.loadOrCreate(keyFile: config.secretsKeyFile)
            let result = try await body(ConsoleStore(database: database, secrets: secrets), AuditLog(database: database))
            await database.shutdown()
            return result
        } catch {
            await database.shutdown()
            throw error
        }
    }

    /// Creates an account; `password` nil makes one (returned, to be shown once).
    public static func create(config: CoordinatorConfig, name: String, role: String, password: String?) async throws -> String {
        guard let role = APIRole(rawValue: role) else { throw Failure.message("role must be admin, operator or viewer") }
        let chosen = password ?? ConsolePasswords.generate()
        try await withStore(config) { accounts, audit in
            do {
                try await accounts.createAccount(name: name, role: role, password: chosen)
            } catch let error as ConsoleStore.CreateError {
                throw Failure.message(error.description)
            }
            await audit.record(actor: "host:\(NSUserName())", source: "local", action: "account.create \(name)", outcome: "ok", detail: "role \(role.rawValue)")
        }
        return chosen
    }

    public static func list(config: CoordinatorConfig) async throws -> [AccountLine] {
        try await withStore(config) { accounts, _ in
            let now = Date().timeIntervalSince1970
            var lines: [AccountLine] = []
            for account in try await accounts.accounts() {
                lines.append(AccountLine(
                    name: account.name, role: account.role.rawValue, locked: (account.lockedUntil ?? 0) > now,
                    sessions: try await accounts.sessions(of: account.name).count))
            }
            return lines
        }
    }
}
