import NIOCore

/// Error text from a value parser; shown after the key path.
public struct ValueError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Durations such as `3s`, `250ms`, `1m30s`, `2h`.
public enum DurationParser {
    private static let units: [(String, Double)] = [
        ("ns", 1e-9), ("us", 1e-6), ("µs", 1e-6), ("ms", 1e-3), ("s", 1), ("m", 60), ("h", 3600),
    ]

    public static func parse(_ text: String) throws -> Duration {
        let trimmed = text.trimmingWhitespace()
        if trimmed == "0" { return .zero }
        var rest = Substring(trimmed)
        var seconds = 0.0
        guard !rest.isEmpty else { throw ValueError("empty duration") }
        while !rest.isEmpty {
            let number = rest.prefix { $0.isNumber || $0 == "." }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { $0.isLetter || $0 == "µ" }
            rest = rest.dropFirst(unit.count)
            guard let value = Double(number), let scale = units.first(where: { $0.0 == unit })?.1 else {
                throw ValueError("\"\(text)\" is not a duration (examples: 500ms, 3s, 1m30s)")
            }
            seconds += value * scale
        }
        let nanoseconds = (seconds * 1e9).rounded()
        guard nanoseconds.isFinite, nanoseconds < Double(Int64.max) else { throw ValueError("\"\(text)\" is too long") }
        return .nanoseconds(Int64(nanoseconds))
    }
}

/// Data rates in bytes per second. Bit units are decimal like tc's (`80mbit` = 80,000,000 bit/s); byte units
/// take SI (`MB/s`) or binary (`MiB/s`) prefixes. `Mbps`-style units are refused because tools disagree on
/// whether they mean bits or bytes.
public enum ByteRateParser {
    private static let prefixes: [String: Double] = [
        "": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
        "ki": 1024, "mi": 1_048_576, "gi": 1_073_741_824, "ti": 1_099_511_627_776,
    ]

    /// Returns bytes per second.
    public static func parse(_ text: String) throws -> Double {
        let trimmed = text.trimmingWhitespace()
        let number = trimmed.prefix { $0.isNumber || $0 == "." }
        var unit = trimmed.dropFirst(number.count).trimmingWhitespace()
        guard let value = Double(number), value > 0 else {
            throw ValueError("\"\(text)\" is not a positive rate (examples: 10MiB/s, 80mbit, 1gbit)")
        }
        if unit.lowercased().hasSuffix("bps") {
            throw ValueError("\"\(text)\" is ambiguous: write bits as \(number)\(unit.dropLast(3))bit or bytes as \(number)\(unit.dropLast(3).uppercased())B/s")
        }
        if unit.hasSuffix("/s") { unit = String(unit.dropLast(2)) }
        let lower = unit.lowercased()
        if lower.hasSuffix("bit") {
            guard let scale = prefixes[String(lower.dropLast(3))] else { throw unknown(text) }
            return value * scale / 8
        }
        if unit.hasSuffix("B") {
            guard let scale = prefixes[String(lower.dropLast(1))] else { throw unknown(text) }
            return value * scale
        }
        throw unknown(text)
    }

    private static func unknown(_ text: String) -> ValueError {
        ValueError("\"\(text)\" has an unknown unit (bits: bit, kbit, mbit, gbit; bytes: B/s, KB/s, MB/s, KiB/s, MiB/s, GiB/s)")
    }
}

/// Sizes in bytes: a plain number, or one with `B`, `KB`/`MB`/`GB` (decimal) or `KiB`/`MiB`/`GiB` (binary).
public enum ByteSizeParser {
    private static let prefixes: [String: Int] = [
        "": 1, "k": 1000, "m": 1_000_000, "g": 1_000_000_000, "ki": 1 << 10, "mi": 1 << 20, "gi": 1 << 30,
    ]

    public static func parse(_ text: String) throws -> Int {
        let trimmed = text.trimmingWhitespace()
        let digits = trimmed.prefix { $0.isASCII && $0.isNumber }
        let unit = trimmed.dropFirst(digits.count).trimmingWhitespace().lowercased()
        guard let value = Int(digits), value > 0 else { throw ValueError("\"\(text)\" is not a positive size (examples: 16MiB, 500KB, 65536)") }
        let prefix = unit.hasSuffix("b") ? String(unit.dropLast()) : unit
        guard let scale = prefixes[prefix], unit.isEmpty || unit.hasSuffix("b") else {
            throw ValueError("\"\(text)\" has an unknown unit (B, KB, MB, GB, KiB, MiB, GiB)")
        }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
        guard !overflow, bytes <= 1 << 40 else { throw ValueError("\"\(text)\" is too large (at most 1TiB)") }
        return bytes
    }
}

/// A `host:port` pair. IPv6 literals are bracketed: `[2001:db8::1]:443`.
public struct HostPort: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// True when `host` is an IPv4 or IPv6 literal rather than a name to resolve.
    public var isIPLiteral: Bool { (try? SocketAddress(ipAddress: host, port: 0)) != nil }

    public static func parse(_ text: String) throws -> HostPort {
        try parse(text, allowPortZero: false)
    }

    /// `host` or `host:port`; a bare address or name gets `defaultPort`.
    public static func parse(_ text: String, defaultPort: Int) throws -> HostPort {
        if (try? SocketAddress(ipAddress: text, port: 0)) != nil { return HostPort(host: text, port: defaultPort) }
        if !text.contains(":") {
            guard !text.isEmpty, isValidHostName(text[...]) else { throw ValueError("\"\(text)\" is not a valid host name or address") }
            return HostPort(host: text, port: defaultPort)
        }
        return try parse(text)
    }

    /// `allowPortZero` accepts port 0 (bind to any free port).
    public static func parse(_ text: String, allowPortZero: Bool) throws -> HostPort {
        let host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw ValueError("\"\(text)\" is not [IPv6]:port")
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
            guard (try? SocketAddress(ipAddress: String(host), port: 0)) != nil else {
                throw ValueError("\"\(host)\" is not an IPv6 address")
            }
        } else {
            guard let colon = text.lastIndex(of: ":") else { throw ValueError("\"\(text)\" has no port (write host:port)") }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
            if host.contains(":") { throw ValueError("\"\(text)\": put IPv6 addresses in brackets, as [\(host)]:\(portText)") }
        }
        guard let port = Int(portText), ((allowPortZero ? 0 : 1)...65535).contains(port) else {
            throw ValueError("\"\(portText)\" is not a port number (\(allowPortZero ? 0 : 1)-65535)")
        }
        guard !host.isEmpty, isValidHostName(host) else { throw ValueError("\"\(host)\" is not a valid host name or address") }
        return HostPort(host: String(host), port: port)
    }

    private static func isValidHostName(_ host: Substring) -> Bool {
        if (try? SocketAddress(ipAddress: String(host), port: 0)) != nil { return true }
        if host.allSatisfy({ $0.isNumber || $0 == "." }) { return false }  // a mistyped IPv4 address
        let labels = host.split(separator: ".", omittingEmptySubsequences: false)
        return host.count <= 253 && labels.allSatisfy { label in
            (1...63).contains(label.count) && label.first != "-" && label.last != "-"
                && label.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
        }
    }
}

/// An address to bind: an IP literal and a port (`0.0.0.0:8080`, `[::]:8080`, `127.0.0.1:0`).
public struct BindAddress: Sendable, Hashable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public var description: String { HostPort(host: host, port: port).description }

    public func socketAddress() throws -> SocketAddress { try SocketAddress(ipAddress: host, port: port) }

    public static func parse(_ text: String) throws -> BindAddress {
        let parsed = try HostPort.parse(text, allowPortZero: true)
        // Canonical text (`[::0]` is `::`, `2001:DB8::1` is `2001:db8::1`), so equal addresses compare equal.
        guard let canonical = try? SocketAddress(ipAddress: parsed.host, port: 0).ipAddress else {
            throw ValueError("\"\(text)\": a listen address must be an IP address, such as 0.0.0.0:\(parsed.port) or [::]:\(parsed.port)")
        }
        return BindAddress(host: canonical, port: parsed.port)
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(self.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
