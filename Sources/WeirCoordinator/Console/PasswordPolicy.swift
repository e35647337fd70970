import Foundation
import HummingbirdBcrypt
import NIOPosix

/// What a console password must be (NIST SP 800-63B: length, not composition rules, and not a known one),
/// and its hashing: bcrypt at cost 12, on NIO's thread pool — a hash takes ~0.25 s of CPU, which must not
/// stall an event loop.
enum PasswordPolicy {
    static let minimumLength = 12
    static let maximumLength = 128
    static let bcryptCost: UInt8 = 12

    /// The 10,000 most common passwords of 6 characters or more (zxcvbn's frequency list, MIT licence).
    static let common: Set<Substring> = {
        let text = String(decoding: PackageResources.common_passwords_txt, as: UTF8.self)
        return Set(text.split(separator: "\n"))
    }()

    /// Why `password` is refused for `account`, or nil.
    static func problem(_ password: String, account: String) -> String? {
        if password.count < minimumLength { return "a password needs at least \(minimumLength) characters" }
        if password.utf8.count > maximumLength { return "a password may have at most \(maximumLength) bytes" }
        let lowered = password.lowercased()
        if Set(lowered).count < 5 { return "this password repeats too few characters; choose a longer phrase" }
        if !account.isEmpty, lowered.contains(account.lowercased()) { return "a password may not contain the account name" }
        if common.contains(Substring(lowered)) { return "this is one of the most common passwords; choose another" }
        // A common password with digits or symbols around it ("password2024!") is as guessable.
        let core = lowered.trimmingCharacters(in: CharacterSet.letters.inverted)
        if core.count >= 6, common.contains(Substring(core)) { return "this is a common password with a few characters added; choose another" }
        if isSequence(lowered) { return "a password may not be a run of keys or digits" }
        return nil
    }

    /// "abcdef…", "123456…", "qwerty…" repeated or run through.
    private static func isSequence(_ text: String) -> Bool {
        let rows = ["abcdefghijklmnopqrstuvwxyz", "01234567890", "qwertyuiopasdfghjklzxcvbnm", "zyxwvutsrqponmlkjihgfedcba", "09876543210"]
        let doubled = rows.map { String(repeating: $0, count: 8) }
        return doubled.contains { $0.contains(text) }
    }

    static func hash(_ password: String) async throws -> String {
        try await NIOThreadPool.singleton.runIfActive { Bcrypt.hash(password, cost: bcryptCost) }
    }

    /// Whether `password` matches `hash`. With no hash (an unknown account) a dummy hash is checked, so the
    /// answer takes as long as for a real account and does not tell which names exist.
    static func verify(_ password: String, hash: String?) async throws -> Bool {
        let matched = try await NIOThreadPool.singleton.runIfActive { Bcrypt.verify(password, hash: hash ?? dummyHash) }
        return hash != nil && matched
    }

    private static let dummyHash = Bcrypt.hash("weir-console-no-such-account", cost: bcryptCost)
}

/// Passwords the coordinator makes (the first administrator's, `weir coordinator admin create` without one):
/// 24 characters from an alphabet without look-alikes, ~137 bits.
public enum ConsolePasswords {
    public static func generate() -> String {
        let alphabet = Array("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        var generator = SystemRandomNumberGenerator()
        var password = ""
        repeat {
            password = String((0..<24).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
        } while PasswordPolicy.problem(password, account: "admin") != nil
        return password
    }
}
