import NIOCore

/// An IPv4 or IPv6 network: an address and a prefix length (32 or 128 for a single address).
///
/// Stored as two integers rather than a byte array: allowlists hold hundreds of thousands of these in sets,
/// and hashing and comparing must not touch the heap.
public struct IPNetwork: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The address, left-aligned in 128 bits (an IPv4 address fills the top 32), host bits zero.
    private let high: UInt64
    private let low: UInt64
    private let length: UInt8
    public let isIPv4: Bool

    public var prefix: Int { Int(length) }
    public var width: Int { isIPv4 ? 32 : 128 }
    public var isSingleAddress: Bool { prefix == width }

    /// 4 bytes (IPv4) or 16 (IPv6).
    public var bytes: [UInt8] {
        let all = (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * $0)) } + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * $0)) }
        return isIPv4 ? Array(all.prefix(4)) : all
    }

    /// Two words into the hasher instead of four fields: allowlist deltas hash every element twice.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(high)
        hasher.combine(low ^ (UInt64(length) << 1) ^ (isIPv4 ? 1 : 0))
    }

    /// Masks host bits off.
    public init(bytes: [UInt8], prefix: Int) {
        precondition(bytes.count == 4 || bytes.count == 16)
        isIPv4 = bytes.count == 4
        let width = bytes.count * 8
        let length = max(0, min(prefix, width))
        self.length = UInt8(length)
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (index, byte) in bytes.enumerated() {
            if index < 8 { high |= UInt64(byte) << (56 - 8 * index) } else { low |= UInt64(byte) << (56 - 8 * (index - 8)) }
        }
        (self.high, self.low) = Self.masked(high, low, length)
    }

    private static func masked(_ high: UInt64, _ low: UInt64, _ length: Int) -> (UInt64, UInt64) {
        let highMask: UInt64 = length >= 64 ? .max : (length == 0 ? 0 : ~(UInt64.max >> length))
        let lowMask: UInt64 = length <= 64 ? 0 : (length >= 128 ? .max : ~(UInt64.max >> (length - 64)))
        return (high & highMask, low & lowMask)
    }

    /// `192.0.2.7`, `198.51.100.0/24`, `2001:db8::/32`. Host bits set after the prefix are an error: the
    /// writer probably meant something else.
    public static func parse(_ text: String) throws -> IPNetwork {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = Self.addressBytes(String(parts[0])) else {
            throw ValueError("\"\(text)\" is not an IP address or CIDR network")
        }
        var prefix = address.count * 8
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...address.count * 8).contains(value) else {
                throw ValueError("\"\(text)\": the prefix length must be 0-\(address.count * 8)")
            }
            prefix = value
        }
        let network = IPNetwork(bytes: address, prefix: prefix)
        if network.bytes != address {
            throw ValueError("\"\(text)\" has host bits set; the network is \(network)")
        }
        return network
    }

    /// The bytes of an IPv4 or IPv6 address literal, or nil.
    public static func addressBytes(_ text: String) -> [UInt8]? {
        guard let address = try? SocketAddress(ipAddress: text, port: 0) else { return nil }
        switch address {
        case .v4(let v4): return withUnsafeBytes(of: v4.address.sin_addr) { Array($0) }
        case .v6(let v6): return withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
        default: return nil
        }
    }

    public var address: String {
        guard let text = try? SocketAddress(packedIPAddress: ByteBuffer(bytes: bytes), port: 0).ipAddress else { return "?" }
        return text
    }

    public var description: String { isSingleAddress ? address : "\(address)/\(prefix)" }

    public func contains(_ other: IPNetwork) -> Bool {
        guard other.isIPv4 == isIPv4, other.length >= length else { return false }
        let (high, low) = Self.masked(other.high, other.low, prefix)
        return high == self.high && low == self.low
    }

    public func overlaps(_ other: IPNetwork) -> Bool { contains(other) || other.contains(self) }

    /// IPv4 before IPv6, then by address, then by prefix length.
    public static func < (a: IPNetwork, b: IPNetwork) -> Bool {
        if a.isIPv4 != b.isIPv4 { return a.isIPv4 }
        return (a.high, a.low, a.length) < (b.high, b.low, b.length)
    }

    // MARK: - Address space

    private static func networks(_ texts: [String]) -> [IPNetwork] { texts.map { try! IPNetwork.parse($0) } }

    /// Ranges that are not reachable on the public internet: private, shared (CGNAT), loopback, link-local,
    /// documentation, benchmarking, multicast, reserved; for IPv6 everything outside global unicast 2000::/3,
    /// and documentation space inside it.
    public static let nonPublic: [IPNetwork] = networks([
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
        "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
        "224.0.0.0/4", "240.0.0.0/4",
        "::/3", "4000::/2", "8000::/1", "2001:db8::/32",
    ])

    /// RFC 1918 and unique-local (ULA) networks: an organisation's internal addresses.
    public static let privateNetworks: [IPNetwork] = networks(["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"])

    /// Whether no part of this network is in `nonPublic`.
    public var isPublic: Bool { !Self.nonPublic.contains { $0.overlaps(self) } }

    /// The smallest list of networks covering `whole` minus `excluded`, in address order.
    public static func subtract(_ excluded: [IPNetwork], from whole: IPNetwork) -> [IPNetwork] {
        let relevant = excluded.filter { $0.isIPv4 == whole.isIPv4 && $0.overlaps(whole) }
        if relevant.contains(where: { $0.contains(whole) }) { return [] }
        if relevant.isEmpty { return [whole] }
        // Split in halves until each half is either clean or wholly excluded.
        let bit = whole.prefix
        var upper = whole.bytes
        upper[bit / 8] |= UInt8(0x80 >> (bit % 8))
        return subtract(relevant, from: IPNetwork(bytes: whole.bytes, prefix: bit + 1))
            + subtract(relevant, from: IPNetwork(bytes: upper, prefix: bit + 1))
    }
}

/// As text (`10.8.0.0/24`, `10.8.0.2`), in state files and records.
extension IPNetwork: Codable {
    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { self = try IPNetwork.parse(text) } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not an address or network: \(text)"))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}
