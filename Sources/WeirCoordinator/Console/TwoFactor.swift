import Crypto
import Foundation
import HummingbirdOTP

/// TOTP two-factor sign-in (RFC 6238: SHA-1, 6 digits, 30 s steps — what every authenticator app takes) and
/// recovery codes. A code is accepted for the step before and after the current one (clocks drift), and each
/// step only once per account: the database keeps the last step used.
enum TwoFactor {
    static let stepSeconds = 30
    static let issuer = "Weir"
    static let recoveryCodeCount = 10
    /// How long a password-checked session may wait for its second factor.
    static let pendingLifetime: Double = 300

    /// 32 characters of the base32 alphabet: the HMAC key is their ASCII bytes (160 bits of randomness).
    static func newSecret() -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        var generator = SystemRandomNumberGenerator()
        return String((0..<32).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] })
    }

    static func step(_ time: Double) -> Int64 { Int64(time) / Int64(stepSeconds) }

    /// The step whose code `code` is, within one step of `time`; nil when none.
    static func matchingStep(secret: String, code: String, time: Double) -> Int64? {
        let digits = code.filter { !$0.isWhitespace }
        guard digits.count == 6, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), let wanted = Int(digits) else { return nil }
        let totp = TOTP(secret: secret)
        let current = step(time)
        for candidate in [current, current - 1, current + 1] {
            let date = Date(timeIntervalSince1970: Double(candidate * Int64(stepSeconds)) + 1)
            if totp.compute(date: date) == wanted { return candidate }
        }
        return nil
    }

    /// The key as authenticator apps take it when typed: base32 of the HMAC key (as in the QR code's URL).
    static func typedKey(secret: String) -> String {
        URLComponents(string: url(secret: secret, account: "-"))?.queryItems?.first { $0.name == "secret" }?.value ?? ""
    }

    /// The otpauth:// URL an authenticator app scans.
    static func url(secret: String, account: String) -> String {
        TOTP(secret: secret).createAuthenticatorURL(label: "\(issuer):\(account)", issuer: issuer)
    }

    /// `recoveryCodeCount` codes like `k7m2-p9qx-4tzw`, shown once; stored as SHA-256 (they are random, long enough).
    static func newRecoveryCodes() -> [String] {
        let alphabet = Array("abcdefghjkmnpqrstuvwxyz23456789")
        var generator = SystemRandomNumberGenerator()
        return (0..<recoveryCodeCount).map { _ in
            (0..<3).map { _ in String((0..<4).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &generator)] }) }.joined(separator: "-")
        }
    }

    static func hashRecoveryCode(_ code: String) -> String { Secrets.hash(code.lowercased().filter { !$0.isWhitespace }) }
}
