import Crypto
import Foundation
import NIOCore
import NIOFoundationCompat

/// The Shadowsocks AEAD stream format (SIP004), wire-compatible with shadowsocks-libev: each direction starts
/// with a random salt; a per-connection subkey is HKDF-SHA1(master key, salt, "ss-subkey"); the stream is a
/// sequence of chunks `[length (2 bytes, big-endian, at most 0x3FFF)][tag][payload][tag]`, each sealed with a
/// 12-byte little-endian counter nonce that advances after every seal. No I/O here: the channel handlers
/// feed bytes in and take bytes out.
public enum ShadowsocksCipher: String, Sendable, CaseIterable {
    case chacha20IETFPoly1305 = "chacha20-ietf-poly1305"
    case aes256GCM = "aes-256-gcm"
    case aes128GCM = "aes-128-gcm"

    var keySize: Int { self == .aes128GCM ? 16 : 32 }
    var saltSize: Int { keySize }
    static let tagSize = 16
    static let maxPayload = 0x3FFF

    /// The master key from a password, as shadowsocks-libev derives it (OpenSSL's EVP_BytesToKey with MD5,
    /// one iteration, no salt).
    func masterKey(password: String) -> SymmetricKey {
        var key: [UInt8] = []
        var previous: [UInt8] = []
        while key.count < keySize {
            previous = Array(Insecure.MD5.hash(data: previous + Array(password.utf8)))
            key += previous
        }
        return SymmetricKey(data: key.prefix(keySize))
    }

    func subkey(master: SymmetricKey, salt: [UInt8]) -> SymmetricKey {
        HKDF<Insecure.SHA1>.deriveKey(
            inputKeyMaterial: master, salt: salt, info: Array("ss-subkey".utf8), outputByteCount: keySize)
    }

    fileprivate func seal(_ plaintext: some DataProtocol, key: SymmetricKey, nonce: [UInt8]) throws -> (ciphertext: Data, tag: Data) {
        switch self {
        case .chacha20IETFPoly1305:
            let box = try ChaChaPoly.seal(plaintext, using: key, nonce: ChaChaPoly.Nonce(data: nonce))
            return (box.ciphertext, box.tag)
        case .aes256GCM, .aes128GCM:
            let box = try AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(data: nonce))
            return (box.ciphertext, box.tag)
        }
    }

    fileprivate func open(ciphertext: some DataProtocol, tag: some DataProtocol, key: SymmetricKey, nonce: [UInt8]) throws -> Data {
        switch self {
        case .chacha20IETFPoly1305:
            try ChaChaPoly.open(ChaChaPoly.SealedBox(nonce: ChaChaPoly.Nonce(data: nonce), ciphertext: ciphertext, tag: tag), using: key)
        case .aes256GCM, .aes128GCM:
            try AES.GCM.open(AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: nonce), ciphertext: ciphertext, tag: tag), using: key)
        }
    }
}

/// The 12-byte little-endian counter nonce: a 96-bit counter kept as two words, rendered per seal.
private struct NonceCounter {
    private var low: UInt64 = 0
    private var high: UInt32 = 0

    mutating func next() -> [UInt8] {
        defer {
            low &+= 1
            if low == 0 { high &+= 1 }
        }
        return withUnsafeBytes(of: (low.littleEndian, high.littleEndian)) { Array($0.prefix(12)) }
    }
}

/// Encrypts one direction of a stream.
struct ShadowsocksSealer {
    let cipher: ShadowsocksCipher
    private let master: SymmetricKey
    private let salt: [UInt8]
    private var subkey: SymmetricKey?
    private var nonce = NonceCounter()

    /// `salt`: random in use (see `randomSalt`); fixed only in tests.
    init(cipher: ShadowsocksCipher, master: SymmetricKey, salt: [UInt8]) {
        self.cipher = cipher
        self.master = master
        self.salt = salt
    }

    static func randomSalt(_ cipher: ShadowsocksCipher) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<cipher.saltSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// Appends the sealed form of `plaintext` to `output`: the salt before the first chunk, then chunks of at
    /// most 0x3FFF bytes.
    mutating func seal(_ plaintext: ByteBuffer, into output: inout ByteBuffer) throws {
        let key: SymmetricKey
        if let subkey {
            key = subkey
        } else {
            key = cipher.subkey(master: master, salt: salt)
            subkey = key
            output.writeBytes(salt)
        }
        var rest = plaintext
        output.reserveCapacity(minimumWritableBytes: rest.readableBytes + (rest.readableBytes / ShadowsocksCipher.maxPayload + 1) * 34)
        while rest.readableBytes > 0 {
            let count = min(rest.readableBytes, ShadowsocksCipher.maxPayload)
            // A view of the chunk, not a copy: swift-crypto reads it as DataProtocol.
            let chunk = rest.readSlice(length: count)!
            let length = try cipher.seal([UInt8(count >> 8), UInt8(count & 0xFF)], key: key, nonce: nonce.next())
            output.writeBytes(length.ciphertext)
            output.writeBytes(length.tag)
            let payload = try cipher.seal(chunk.readableBytesView, key: key, nonce: nonce.next())
            output.writeBytes(payload.ciphertext)
            output.writeBytes(payload.tag)
        }
    }
}

/// Decrypts one direction of a stream, from whatever has arrived so far.
struct ShadowsocksOpener {
    enum Failure: Error, CustomStringConvertible {
        case authentication
        case badLength(Int)

        var description: String {
            switch self {
            case .authentication: "a chunk failed authentication (wrong password or cipher, or tampered data)"
            case .badLength(let length): "chunk length \(length) is above 0x3FFF"
            }
        }
    }

    let cipher: ShadowsocksCipher
    private let master: SymmetricKey
    private var subkey: SymmetricKey?
    private var nonce = NonceCounter()
    /// The payload length of the chunk whose length was read, while waiting for its payload.
    private var pendingLength: Int?
    private var buffer = ByteBuffer()

    init(cipher: ShadowsocksCipher, master: SymmetricKey) {
        self.cipher = cipher
        self.master = master
    }

    /// Consumes `ciphertext` and returns the plaintext of every chunk now complete (possibly none).
    /// A failure is final: the stream cannot be resynchronised.
    mutating func open(_ ciphertext: ByteBuffer) throws -> ByteBuffer {
        var input = ciphertext
        buffer.writeBuffer(&input)
        var plaintext = ByteBuffer()
        plaintext.reserveCapacity(buffer.readableBytes)
        if subkey == nil {
            guard let salt = buffer.readBytes(length: cipher.saltSize) else { return plaintext }
            subkey = cipher.subkey(master: master, salt: salt)
        }
        let key = subkey!
        let tag = ShadowsocksCipher.tagSize
        while true {
            if pendingLength == nil {
                guard buffer.readableBytes >= 2 + tag else { break }
                let sealed = buffer.readSlice(length: 2)!, sealedTag = buffer.readSlice(length: tag)!
                guard let length = try? cipher.open(ciphertext: sealed.readableBytesView, tag: sealedTag.readableBytesView, key: key, nonce: nonce.next()) else {
                    throw Failure.authentication
                }
                let value = Int(length[length.startIndex]) << 8 | Int(length[length.startIndex + 1])
                guard value <= ShadowsocksCipher.maxPayload else { throw Failure.badLength(value) }
                pendingLength = value
            }
            guard let length = pendingLength, buffer.readableBytes >= length + tag else { break }
            let sealed = buffer.readSlice(length: length)!, sealedTag = buffer.readSlice(length: tag)!
            guard let payload = try? cipher.open(ciphertext: sealed.readableBytesView, tag: sealedTag.readableBytesView, key: key, nonce: nonce.next()) else {
                throw Failure.authentication
            }
            plaintext.writeBytes(payload)
            pendingLength = nil
        }
        buffer.discardReadBytes()
        return plaintext
    }
}
