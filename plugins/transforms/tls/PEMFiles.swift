import Crypto
import Foundation
import NIOSSL
import WeirCore

/// Reads the PEM files a TLS stage names, at validation time: a missing or malformed file is a configuration
/// error at its key, and the files' digest becomes part of the stage's fingerprint so a reload picks up a
/// renewed certificate.
struct PEMFiles {
    private var digest = SHA256()
    /// Every certificate file read, with its earliest expiry.
    private(set) var loaded: [LoadedCertificate] = []

    /// The file a value names, relative paths taken from the YAML file's directory.
    static func path(_ value: ConfigValue) -> String? { value.filePath }

    private mutating func read(_ value: ConfigValue) -> (path: String, bytes: [UInt8])? {
        guard let path = Self.path(value) else { return nil }
        guard let data = FileManager.default.contents(atPath: path) else {
            value.error("cannot read \(path)")
            return nil
        }
        let bytes = [UInt8](data)
        digest.update(data: Array(path.utf8) + [0] + bytes)
        return (path, bytes)
    }

    /// One or more certificates (a chain: leaf first, or a CA bundle).
    mutating func certificates(_ value: ConfigValue) -> [NIOSSLCertificate]? {
        guard let (path, bytes) = read(value) else { return nil }
        do {
            let certificates = try NIOSSLCertificate.fromPEMBytes(bytes)
            guard !certificates.isEmpty else {
                value.error("\(path) holds no PEM certificate")
                return nil
            }
            loaded.append(LoadedCertificate(file: path, notAfter: certificates.map { Int($0.notValidAfter) }.min()!))
            return certificates
        } catch {
            value.error("\(path) is not a PEM certificate file: \(error)")
            return nil
        }
    }

    mutating func privateKey(_ value: ConfigValue) -> NIOSSLPrivateKey? {
        guard let (path, bytes) = read(value) else { return nil }
        do {
            return try NIOSSLPrivateKey(bytes: bytes, format: .pem)
        } catch {
            value.error("\(path) is not a PEM private key (encrypted keys are not supported): \(error)")
            return nil
        }
    }

    /// Hex SHA-256 over every file read, with its path.
    var fingerprint: String {
        digest.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
