import Crypto
import Foundation

/// A WireGuard key (Curve25519, 32 bytes): base64 in configurations and `wg` output, lowercase hex on the
/// UAPI socket.
public struct WireGuardKey: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 32 else { return nil }
        self.bytes = bytes
    }

    public init?(base64: String) {
        guard let data = Data(base64Encoded: base64.trimmingCharacters(in: .whitespacesAndNewlines)) else { return nil }
        self.init(bytes: Array(data))
    }

    public init?(hex: String) {
        guard hex.utf8.count == 64 else { return nil }
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            guard let byte = UInt8(hex[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        self.init(bytes: bytes)
    }

    public var base64: String { Data(bytes).base64EncodedString() }
    public var hex: String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// Public keys are shown; a private key's description never prints it.
    public var description: String { base64 }

    /// A new private key.
    public static func generatePrivate() -> WireGuardKey {
        WireGuardKey(bytes: Array(Curve25519.KeyAgreement.PrivateKey().rawRepresentation))!
    }

    /// The public key of this private key.
    public var publicKey: WireGuardKey {
        let key = try! Curve25519.KeyAgreement.PrivateKey(rawRepresentation: bytes)
        return WireGuardKey(bytes: Array(key.publicKey.rawRepresentation))!
    }
}
