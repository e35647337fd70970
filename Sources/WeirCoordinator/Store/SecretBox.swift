import Crypto
import Foundation
import WeirCore

/// Seals the secrets the coordinator generates and must give back (relay keys; later WireGuard private keys)
/// before they reach the database, so a copied database or backup does not hand them out. The key lives in
/// a 0600 file beside the database (`coordinator.secrets_key_file`); every instance sharing a PostgreSQL
/// database needs the same file.
///
/// Sealed text is `sealed:v1:` and the base64 of a ChaCha20-Poly1305 box whose associated data names what
/// it belongs to (`relay/<name>`), so a sealed value moved to another row does not open.
struct SecretBox: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    static let prefix = "sealed:v1:"
    private let key: SymmetricKey
    let keyFile: String

    init(key: SymmetricKey, keyFile: String) {
        self.key = key
        self.keyFile = keyFile
    }

    /// Reads the key file, or creates it (32 random bytes, base64, 0600) when it does not exist.
    static func loadOrCreate(keyFile: String) throws(Failure) -> SecretBox {
        if let data = FileManager.default.contents(atPath: keyFile) {
            PrivateFile.restrict(keyFile)
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard let bytes = Data(base64Encoded: text), bytes.count == 32 else {
                throw Failure(description: "\(keyFile) is not a secrets key (the base64 of 32 bytes)")
            }
            return SecretBox(key: SymmetricKey(data: bytes), keyFile: keyFile)
        }
        let key = SymmetricKey(size: .bits256)
        let text = key.withUnsafeBytes { Data($0).base64EncodedString() } + "\n"
        do {
            try PrivateFile.write(Array(text.utf8), to: keyFile)
        } catch {
            throw Failure(description: "cannot create the secrets key: \(error)")
        }
        return SecretBox(key: key, keyFile: keyFile)
    }

    func seal(_ secret: String, for owner: String) throws -> String {
        let box = try ChaChaPoly.seal(Data(secret.utf8), using: key, authenticating: Data(owner.utf8))
        return Self.prefix + box.combined.base64EncodedString()
    }

    /// The secret; text without the prefix was stored before sealing existed and is returned as it is.
    func open(_ stored: String, for owner: String) throws(Failure) -> String {
        guard stored.hasPrefix(Self.prefix) else { return stored }
        guard let combined = Data(base64Encoded: String(stored.dropFirst(Self.prefix.count))),
            let box = try? ChaChaPoly.SealedBox(combined: combined),
            let plain = try? ChaChaPoly.open(box, using: key, authenticating: Data(owner.utf8))
        else {
            throw Failure(description: "the secret of \(owner) does not open with the secrets key \(keyFile): "
                + "every coordinator instance on this database needs the same key file")
        }
        return String(decoding: plain, as: UTF8.self)
    }

    static func isSealed(_ stored: String) -> Bool { stored.hasPrefix(prefix) }
}
