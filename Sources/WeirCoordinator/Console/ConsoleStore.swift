import Crypto
import Foundation
import SQLKit

/// A person who signs in to the console.
struct ConsoleAccount: Sendable, Equatable {
    var name: String
    var role: APIRole
    var passwordHash: String
    /// Consecutive failed sign-ins, and until when the account refuses sign-ins after too many.
    var failedLogins: Int
    var lockedUntil: Double?
    var createdAt: Double
    var passwordChangedAt: Double
    /// Whether sign-in asks for a TOTP code after the password.
    var twoFactor: Bool
    var recoveryCodesLeft: Int
}

/// A signed-in browser. The cookie carries the id; the database keeps only its hash.
struct ConsoleSession: Sendable, Equatable {
    var idHash: String
    var account: String
    /// The synchronizer token every state-changing request must carry.
    var csrf: String
    var createdAt: Double
    var lastSeen: Double
    var address: String
    var userAgent: String
    /// `full`, or `second_factor`: the password was right, the TOTP code is still to come.
    var stage: String

    static let full = "full", secondFactor = "second_factor"
}

/// Console accounts and sessions, in the coordinator's database (shared by every instance of a PostgreSQL
/// one: a session made by one instance is valid on all).
struct ConsoleStore: Sendable {
    let database: CoordinatorDatabase
    /// Seals TOTP secrets at rest (the coordinator's secrets key).
    let secrets: SecretBox
    var sql: any SQLDatabase { database.sql }

    private static func now() -> Double { Date().timeIntervalSince1970 }

    static var accountNamePattern: Regex<Substring> { /[a-z0-9][a-z0-9._@-]{0,63}/ }

    // MARK: - Accounts

    func accountCount() async throws -> Int {
        try await sql.raw("SELECT COUNT(*) AS n FROM console_accounts").first()?.decode(column: "n", as: Int.self) ?? 0
    }

    func accounts() async throws -> [ConsoleAccount] {
        try await sql.raw("SELECT * FROM console_accounts ORDER BY name").all().map(Self.account)
    }

    func account(_ name: String) async throws -> ConsoleAccount? {
        try await sql.raw("SELECT * FROM console_accounts WHERE name = \(bind: name)").first().map(Self.account)
    }

    enum CreateError: Error, CustomStringConvertible {
        case badName(String), weakPassword(String), exists(String)

        var description: String {
            switch self {
            case .badName(let name):
                return "\"\(name)\" is not an account name: 1-64 of a-z, 0-9, '.', '_', '@', '-', starting with a letter or digit"
            case .weakPassword(let reason): return reason
            case .exists(let name): return "account \"\(name)\" exists"
            }
        }
    }

    /// Creates an account; the password is checked against the policy and stored as a bcrypt hash.
    @discardableResult
    func createAccount(name: String, role: APIRole, password: String) async throws -> ConsoleAccount {
        guard name.wholeMatch(of: Self.accountNamePattern) != nil else { throw CreateError.badName(name) }
        if let problem = PasswordPolicy.problem(password, account: name) { throw CreateError.weakPassword(problem) }
        guard try await account(name) == nil else { throw CreateError.exists(name) }
        let now = Self.now()
        let account = ConsoleAccount(
            name: name, role: role, passwordHash: try await PasswordPolicy.hash(password), failedLogins: 0, lockedUntil: nil, createdAt: now,
            passwordChangedAt: now, twoFactor: false, recoveryCodesLeft: 0)
        try await sql.raw("""
            INSERT INTO console_accounts (name, role, password_hash, failed_logins, created_at, password_changed_at)
            VALUES (\(bind: name), \(bind: role.rawValue), \(bind: account.passwordHash), 0, \(bind: now), \(bind: now))
            """).run()
        return account
    }

    /// A failed sign-in: counted; at `limit` in a row the account is locked until `lockUntil`. Returns whether
    /// this failure locked it.
    func recordFailedLogin(_ name: String, limit: Int, lockUntil: Double) async throws -> Bool {
        guard let account = try await account(name) else { return false }
        let failures = account.failedLogins + 1
        let locks = failures >= limit
        try await sql.raw("""
            UPDATE console_accounts SET failed_logins = \(bind: locks ? 0 : failures), locked_until = \(bind: locks ? lockUntil : account.lockedUntil)
            WHERE name = \(bind: name)
            """).run()
        return locks
    }

    func recordSuccessfulLogin(_ name: String) async throws {
        try await sql.raw("UPDATE console_accounts SET failed_logins = 0, locked_until = NULL WHERE name = \(bind: name)").run()
    }

    /// A new password (already checked against the policy); every other session of the account ends.
    func setPassword(_ name: String, _ password: String, keepingSession: String?) async throws {
        let hash = try await PasswordPolicy.hash(password)
        try await sql.raw("""
            UPDATE console_accounts SET password_hash = \(bind: hash), password_changed_at = \(bind: Self.now()) WHERE name = \(bind: name)
            """).run()
        try await deleteSessions(of: name, keeping: keepingSession)
    }

    func setRole(_ name: String, _ role: APIRole) async throws {
        try await sql.raw("UPDATE console_accounts SET role = \(bind: role.rawValue) WHERE name = \(bind: name)").run()
    }

    func unlock(_ name: String) async throws {
        try await sql.raw("UPDATE console_accounts SET failed_logins = 0, locked_until = NULL WHERE name = \(bind: name)").run()
    }

    func deleteAccount(_ name: String) async throws {
        try await sql.raw("DELETE FROM console_accounts WHERE name = \(bind: name)").run()
        try await deleteSessions(of: name)
    }

    // MARK: - Two-factor sign-in

    /// A secret being enrolled (shown as a QR code until the first code confirms it).
    func setPendingTwoFactor(_ name: String, secret: String) async throws {
        let sealed = try secrets.seal(secret, for: "console:\(name)")
        try await sql.raw("UPDATE console_accounts SET totp_pending = \(bind: sealed) WHERE name = \(bind: name)").run()
    }

    func pendingTwoFactor(_ name: String) async throws -> String? {
        guard let sealed = try await sql.raw("SELECT totp_pending FROM console_accounts WHERE name = \(bind: name)").first()?
            .decode(column: "totp_pending", as: String?.self)
        else { return nil }
        return try secrets.open(sealed, for: "console:\(name)")
    }

    func twoFactorSecret(_ name: String) async throws -> String? {
        guard let sealed = try await sql.raw("SELECT totp_secret FROM console_accounts WHERE name = \(bind: name)").first()?
            .decode(column: "totp_secret", as: String?.self)
        else { return nil }
        return try secrets.open(sealed, for: "console:\(name)")
    }

    /// The pending secret becomes the account's, `step` counts as used, and the recovery codes are replaced.
    func enableTwoFactor(_ name: String, secret: String, usedStep: Int64, recoveryCodes: [String]) async throws {
        let sealed = try secrets.seal(secret, for: "console:\(name)")
        let hashes = try JSONText.encode(recoveryCodes.map(TwoFactor.hashRecoveryCode))
        try await sql.raw("""
            UPDATE console_accounts SET totp_secret = \(bind: sealed), totp_pending = NULL, totp_last_step = \(bind: usedStep),
                recovery_codes = \(bind: hashes) WHERE name = \(bind: name)
            """).run()
    }

    func disableTwoFactor(_ name: String) async throws {
        try await sql.raw("""
            UPDATE console_accounts SET totp_secret = NULL, totp_pending = NULL, totp_last_step = NULL, recovery_codes = '[]'
            WHERE name = \(bind: name)
            """).run()
    }

    /// Takes `step` as used if it is later than every step used before (a code works once); false otherwise.
    func useTwoFactorStep(_ name: String, _ step: Int64) async throws -> Bool {
        try await sql.raw("""
            UPDATE console_accounts SET totp_last_step = \(bind: step)
            WHERE name = \(bind: name) AND (totp_last_step IS NULL OR totp_last_step < \(bind: step)) RETURNING name
            """).first() != nil
    }

    /// Uses a recovery code: removed when it matches (compare-and-swap, so two instances cannot both take it).
    /// Returns how many are left, or nil when the code is not one of them.
    func useRecoveryCode(_ name: String, _ code: String) async throws -> Int? {
        guard let stored = try await sql.raw("SELECT recovery_codes FROM console_accounts WHERE name = \(bind: name)").first()?
            .decode(column: "recovery_codes", as: String.self)
        else { return nil }
        var hashes = try JSONText.decode([String].self, stored)
        guard let index = hashes.firstIndex(of: TwoFactor.hashRecoveryCode(code)) else { return nil }
        hashes.remove(at: index)
        let updated = try await sql.raw("""
            UPDATE console_accounts SET recovery_codes = \(bind: try JSONText.encode(hashes))
            WHERE name = \(bind: name) AND recovery_codes = \(bind: stored) RETURNING name
            """).first()
        return updated == nil ? nil : hashes.count
    }

    // MARK: - Settings

    /// Whether every account must sign in with a second factor (set by an administrator).
    func requiresTwoFactor() async throws -> Bool {
        try await sql.raw("SELECT value FROM console_settings WHERE name = 'require_two_factor'").first()?
            .decode(column: "value", as: String.self) == "true"
    }

    func setRequiresTwoFactor(_ required: Bool) async throws {
        try await sql.raw("DELETE FROM console_settings WHERE name = 'require_two_factor'").run()
        try await sql.raw("INSERT INTO console_settings (name, value) VALUES ('require_two_factor', \(bind: required ? "true" : "false"))").run()
    }

    private static func account(_ row: any SQLRow) throws -> ConsoleAccount {
        ConsoleAccount(
            name: try row.decode(column: "name", as: String.self),
            role: APIRole(rawValue: try row.decode(column: "role", as: String.self)) ?? .viewer,
            passwordHash: try row.decode(column: "password_hash", as: String.self),
            failedLogins: try row.decode(column: "failed_logins", as: Int.self),
            lockedUntil: try row.decode(column: "locked_until", as: Double?.self),
            createdAt: try row.decode(column: "created_at", as: Double.self),
            passwordChangedAt: try row.decode(column: "password_changed_at", as: Double.self),
            twoFactor: try row.decode(column: "totp_secret", as: String?.self) != nil,
            recoveryCodesLeft: try JSONText.decode([String].self, try row.decode(column: "recovery_codes", as: String.self)).count)
    }

    // MARK: - Sessions

    /// A new session for `account`; returns it and the cookie value (shown to the browser only).
    func createSession(account: String, address: String, userAgent: String, stage: String = ConsoleSession.full) async throws -> (ConsoleSession, String) {
        let id = Secrets.make(prefix: "")
        let now = Self.now()
        let session = ConsoleSession(
            idHash: Secrets.hash(id), account: account, csrf: Secrets.make(prefix: ""), createdAt: now, lastSeen: now, address: address,
            userAgent: String(userAgent.prefix(200)), stage: stage)
        try await sql.raw("""
            INSERT INTO console_sessions (id_hash, account, csrf, created_at, last_seen, address, user_agent, stage)
            VALUES (\(bind: session.idHash), \(bind: account), \(bind: session.csrf), \(bind: now), \(bind: now), \(bind: address),
                    \(bind: session.userAgent), \(bind: stage))
            """).run()
        return (session, id)
    }

    func session(cookie id: String) async throws -> ConsoleSession? {
        try await sql.raw("SELECT * FROM console_sessions WHERE id_hash = \(bind: Secrets.hash(id))").first().map(Self.session)
    }

    func sessions(of account: String) async throws -> [ConsoleSession] {
        try await sql.raw("SELECT * FROM console_sessions WHERE account = \(bind: account) ORDER BY created_at").all().map(Self.session)
    }

    func touchSession(_ idHash: String, at time: Double) async throws {
        try await sql.raw("UPDATE console_sessions SET last_seen = \(bind: time) WHERE id_hash = \(bind: idHash)").run()
    }

    func deleteSession(_ idHash: String) async throws {
        try await sql.raw("DELETE FROM console_sessions WHERE id_hash = \(bind: idHash)").run()
    }

    /// Ends every session of `account` (a password change, a removed account), except `keeping`.
    func deleteSessions(of account: String, keeping: String? = nil) async throws {
        try await sql.raw("DELETE FROM console_sessions WHERE account = \(bind: account) AND id_hash <> \(bind: keeping ?? "")").run()
    }

    /// Removes sessions idle since `idleBefore` or created before `createdBefore`.
    func removeExpiredSessions(idleBefore: Double, createdBefore: Double) async throws {
        try await sql.raw("DELETE FROM console_sessions WHERE last_seen < \(bind: idleBefore) OR created_at < \(bind: createdBefore)").run()
    }

    private static func session(_ row: any SQLRow) throws -> ConsoleSession {
        ConsoleSession(
            idHash: try row.decode(column: "id_hash", as: String.self), account: try row.decode(column: "account", as: String.self),
            csrf: try row.decode(column: "csrf", as: String.self), createdAt: try row.decode(column: "created_at", as: Double.self),
            lastSeen: try row.decode(column: "last_seen", as: Double.self), address: try row.decode(column: "address", as: String.self),
            userAgent: try row.decode(column: "user_agent", as: String.self), stage: try row.decode(column: "stage", as: String.self))
    }
}
