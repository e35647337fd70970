/// Users and their passwords, for proxy listeners (`users: {alice: secret}`). Comparison takes the same time
/// whatever matches, so a client cannot learn a password byte by byte from response times.
public struct ProxyCredentials: Sendable, Hashable {
    public let users: [String: String]

    public init(users: [String: String]) { self.users = users }

    public func accepts(username: String, password: String) -> Bool {
        guard let expected = users[username] else {
            _ = Self.constantTimeEqual(Array(password.utf8), Array(password.utf8))
            return false
        }
        return Self.constantTimeEqual(Array(expected.utf8), Array(password.utf8))
    }

    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt8(a.count == b.count ? 0 : 1)
        for index in 0..<max(a.count, b.count) {
            difference |= (index < a.count ? a[index] : 0) ^ (index < b.count ? b[index] : 0)
        }
        return difference == 0
    }

    /// Reads `{name: password, ...}`.
    public static func read(_ value: ConfigValue) -> ProxyCredentials? {
        guard let options = value.mapping else { return nil }
        var users: [String: String] = [:]
        var valid = true
        for (name, _, password) in options.allEntries() {
            guard let text = password.string else {
                valid = false
                continue
            }
            // RFC 1929 carries each in one length byte; HTTP basic auth cannot carry a colon in the name.
            if name.isEmpty || name.utf8.count > 255 || name.contains(":") || text.utf8.count > 255 {
                password.error("user names are 1-255 bytes without ':', passwords at most 255 bytes")
                valid = false
                continue
            }
            users[name] = text
        }
        if users.isEmpty, valid {
            value.error("list at least one user, or leave the key out")
            return nil
        }
        return valid ? ProxyCredentials(users: users) : nil
    }
}
