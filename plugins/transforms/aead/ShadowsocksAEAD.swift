import CLibcrypto
import Crypto
import NIOCore

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
}

/// The 12-byte little-endian counter nonce, advanced in place after every seal or open.
private struct NonceCounter {
    private(set) var bytes = [UInt8](repeating: 0, count: 12)

    mutating func advance() {
        for index in bytes.indices {
            bytes[index] &+= 1
            if bytes[index] != 0 { return }
        }
    }
}

/// One direction's subkey in libcrypto's AEAD interface (AES-GCM or ChaCha20-Poly1305), which reads and
/// writes memory the caller owns: chunks are sealed straight into the outgoing buffer and opened straight
/// into the plaintext one, with no buffers in between. (swift-crypto returns every sealed box as new `Data`,
/// which then had to be copied again; on a relay that was a copy of every byte, twice.)
final class AEADSubkey {
    enum Direction { case seal, open }

    private let context: OpaquePointer
    private let direction: Direction

    init(cipher: ShadowsocksCipher, key: SymmetricKey, direction: Direction) throws {
        guard let context = EVP_CIPHER_CTX_new() else { throw AEADFailure.library }
        self.context = context
        self.direction = direction
        let algorithm: OpaquePointer? =
            switch cipher {
            case .chacha20IETFPoly1305: EVP_chacha20_poly1305()
            case .aes256GCM: EVP_aes_256_gcm()
            case .aes128GCM: EVP_aes_128_gcm()
            }
        // Both ciphers default to the 12-byte nonce Shadowsocks uses; only the nonce changes per chunk.
        let initialised = key.withUnsafeBytes { key in
            let bytes = key.bindMemory(to: UInt8.self).baseAddress
            return direction == .seal
                ? EVP_EncryptInit_ex(context, algorithm, nil, bytes, nil) : EVP_DecryptInit_ex(context, algorithm, nil, bytes, nil)
        }
        guard initialised == 1 else { throw AEADFailure.library }
    }

    deinit { EVP_CIPHER_CTX_free(context) }

    /// Seals `count` bytes from `input` into `output`: `count` bytes of ciphertext, then the 16-byte tag.
    func seal(_ input: UnsafeRawPointer, count: Int, nonce: [UInt8], into output: UnsafeMutableRawPointer) throws {
        let out = output.assumingMemoryBound(to: UInt8.self)
        var written: Int32 = 0, final: Int32 = 0
        let sealed = nonce.withUnsafeBufferPointer { nonce in
            EVP_EncryptInit_ex(context, nil, nil, nil, nonce.baseAddress) == 1
                && EVP_EncryptUpdate(context, out, &written, input.assumingMemoryBound(to: UInt8.self), Int32(count)) == 1
                && EVP_EncryptFinal_ex(context, out + Int(written), &final) == 1
                && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_GET_TAG, Int32(ShadowsocksCipher.tagSize), out + count) == 1
        }
        guard sealed else { throw AEADFailure.library }
    }

    /// Opens `count` bytes of ciphertext at `input`, followed by their tag, into `output`; false when the tag
    /// does not authenticate them.
    func open(_ input: UnsafeRawPointer, count: Int, nonce: [UInt8], into output: UnsafeMutableRawPointer) -> Bool {
        let out = output.assumingMemoryBound(to: UInt8.self)
        let tag = UnsafeMutableRawPointer(mutating: input + count)
        var written: Int32 = 0, final: Int32 = 0
        return nonce.withUnsafeBufferPointer { nonce in
            EVP_DecryptInit_ex(context, nil, nil, nil, nonce.baseAddress) == 1
                && EVP_DecryptUpdate(context, out, &written, input.assumingMemoryBound(to: UInt8.self), Int32(count)) == 1
                && EVP_CIPHER_CTX_ctrl(context, EVP_CTRL_AEAD_SET_TAG, Int32(ShadowsocksCipher.tagSize), tag) == 1
                && EVP_DecryptFinal_ex(context, out + Int(written), &final) == 1
        }
    }
}

enum AEADFailure: Error, CustomStringConvertible {
    case library
    var description: String { "libcrypto refused an AEAD operation" }
}

/// Encrypts one direction of a stream.
struct ShadowsocksSealer {
    let cipher: ShadowsocksCipher
    private let master: SymmetricKey
    private let salt: [UInt8]
    private var subkey: AEADSubkey?
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
    /// most 0x3FFF bytes, each sealed in place in `output`.
    mutating func seal(_ plaintext: ByteBuffer, into output: inout ByteBuffer) throws {
        let key: AEADSubkey
        if let subkey {
            key = subkey
        } else {
            key = try AEADSubkey(cipher: cipher, key: cipher.subkey(master: master, salt: salt), direction: .seal)
            subkey = key
            output.writeBytes(salt)
        }
        let tag = ShadowsocksCipher.tagSize
        var rest = plaintext
        output.reserveCapacity(minimumWritableBytes: rest.readableBytes + (rest.readableBytes / ShadowsocksCipher.maxPayload + 1) * (2 + 2 * tag))
        while rest.readableBytes > 0 {
            let count = min(rest.readableBytes, ShadowsocksCipher.maxPayload)
            let length = [UInt8(count >> 8), UInt8(count & 0xFF)]
            let chunk = 2 + tag + count + tag
            try output.writeWithUnsafeMutableBytes(minimumWritableBytes: chunk) { out in
                try length.withUnsafeBytes { try key.seal($0.baseAddress!, count: 2, nonce: nonce.bytes, into: out.baseAddress!) }
                nonce.advance()
                try rest.withUnsafeReadableBytes { input in
                    try key.seal(input.baseAddress!, count: count, nonce: nonce.bytes, into: out.baseAddress! + 2 + tag)
                }
                nonce.advance()
                return chunk
            }
            rest.moveReaderIndex(forwardBy: count)
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
    private var subkey: AEADSubkey?
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
        if buffer.readableBytes == 0 {
            // Nothing left over: read the new bytes where they are instead of copying them.
            buffer = ciphertext
        } else {
            var input = ciphertext
            buffer.writeBuffer(&input)
        }
        var plaintext = ByteBuffer()
        plaintext.reserveCapacity(buffer.readableBytes)
        if subkey == nil {
            guard let salt = buffer.readBytes(length: cipher.saltSize) else { return plaintext }
            subkey = try AEADSubkey(cipher: cipher, key: cipher.subkey(master: master, salt: salt), direction: .open)
        }
        let key = subkey!
        let tag = ShadowsocksCipher.tagSize
        while true {
            if pendingLength == nil {
                guard buffer.readableBytes >= 2 + tag else { break }
                var length = [UInt8](repeating: 0, count: 2)
                let opened = buffer.withUnsafeReadableBytes { input in
                    length.withUnsafeMutableBytes { key.open(input.baseAddress!, count: 2, nonce: nonce.bytes, into: $0.baseAddress!) }
                }
                guard opened else { throw Failure.authentication }
                nonce.advance()
                buffer.moveReaderIndex(forwardBy: 2 + tag)
                let value = Int(length[0]) << 8 | Int(length[1])
                guard value <= ShadowsocksCipher.maxPayload else { throw Failure.badLength(value) }
                pendingLength = value
            }
            guard let length = pendingLength, buffer.readableBytes >= length + tag else { break }
            var authentic = false
            plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: max(length, 1)) { out in
                authentic = buffer.withUnsafeReadableBytes { input in
                    key.open(input.baseAddress!, count: length, nonce: nonce.bytes, into: out.baseAddress!)
                }
                return authentic ? length : 0
            }
            guard authentic else { throw Failure.authentication }
            nonce.advance()
            buffer.moveReaderIndex(forwardBy: length + tag)
            pendingLength = nil
        }
        if buffer.readableBytes == 0 { buffer = ByteBuffer() } else { buffer.discardReadBytes() }
        return plaintext
    }
}
