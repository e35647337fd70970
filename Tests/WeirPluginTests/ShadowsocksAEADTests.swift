import Crypto
import NIOCore
import NIOEmbedded
import Testing
import WeirCore

@testable import WeirTransforms

/// The Shadowsocks AEAD codec against vectors computed independently (Python's `cryptography` package with
/// shadowsocks-libev's key derivation: EVP_BytesToKey-MD5, HKDF-SHA1 "ss-subkey", little-endian nonces).
@Suite struct ShadowsocksAEADTests {
    static let vectors: [(ShadowsocksCipher, master: String, sealed: String)] = [
        (
            .chacha20IETFPoly1305, "27be15c86f09baf96106564338113deb4d6c707d24f633b4b58dee179299716c",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fb48fb106414b272bba5529d50852f8ed40e60d331fd54ad6786dded70ca148d24f1c1134e989fa26d1b54de93670d2f4931ca9b332f8f72d087db765700c5bf55f921ad025c3a4384fcb2e07aae05c"
        ),
        (
            .aes256GCM, "27be15c86f09baf96106564338113deb4d6c707d24f633b4b58dee179299716c",
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1fef481b6d80b86332196d3a48f4d5ba3b92f487491f2abd17a28c4e88a67b84821f708c8064de9def3eea5e24796475e2dd982b78b2d63d390edfaff3e43869db9173f3e91ec98108088bc58c0e6883"
        ),
        (
            .aes128GCM, "27be15c86f09baf96106564338113deb",
            "000102030405060708090a0b0c0d0e0f246ec8222056e6dd9f12a2382648c64eee0ff87aab00d192547e4ffcc76daeb4b2a7505a7fd88066d3c10f2bac2317bd426d1968ec33b2236826afef4fce3c375ddda89c599db4d2fa9bf20a45dade"
        ),
    ]

    static func hex(_ bytes: some Sequence<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    static func bytes(_ hex: String) -> [UInt8] {
        var result: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            result.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return result
    }

    @Test(arguments: 0..<3)
    func sealsLikeTheReference(_ index: Int) throws {
        let (cipher, master, sealed) = Self.vectors[index]
        let key = cipher.masterKey(password: "weir-test")
        #expect(key.withUnsafeBytes { Self.hex($0) } == master)
        var sealer = ShadowsocksSealer(cipher: cipher, master: key, salt: Array(0..<UInt8(cipher.saltSize)))
        var output = ByteBuffer()
        try sealer.seal(ByteBuffer(string: "hello"), into: &output)
        try sealer.seal(ByteBuffer(string: " world"), into: &output)
        #expect(Self.hex(output.readableBytesView) == sealed)
    }

    @Test(arguments: 0..<3)
    func opensTheReferenceByteByByte(_ index: Int) throws {
        let (cipher, _, sealed) = Self.vectors[index]
        var opener = ShadowsocksOpener(cipher: cipher, master: cipher.masterKey(password: "weir-test"))
        var plaintext = ""
        for byte in Self.bytes(sealed) {
            let out = try opener.open(ByteBuffer(bytes: [byte]))
            plaintext += String(buffer: out)
        }
        #expect(plaintext == "hello world")
    }

    @Test func largeWritesAreChunkedAndRoundTrip() throws {
        let cipher = ShadowsocksCipher.chacha20IETFPoly1305
        let key = cipher.masterKey(password: "secret")
        var sealer = ShadowsocksSealer(cipher: cipher, master: key, salt: ShadowsocksSealer.randomSalt(cipher))
        let message = (0..<100_000).map { UInt8($0 % 251) }
        var wire = ByteBuffer()
        try sealer.seal(ByteBuffer(bytes: message), into: &wire)
        // salt + 7 chunks (6 x 0x3FFF + rest), each with two tags and a 2-byte length
        #expect(wire.readableBytes == 32 + message.count + 7 * (2 + 16 + 16))
        var opener = ShadowsocksOpener(cipher: cipher, master: key)
        var received: [UInt8] = []
        while wire.readableBytes > 0 {
            let piece = wire.readSlice(length: min(wire.readableBytes, 1000))!
            received += Array(try opener.open(piece).readableBytesView)
        }
        #expect(received == message)
    }

    @Test func aWrongPasswordOrAFlippedBitFails() throws {
        let cipher = ShadowsocksCipher.aes256GCM
        var sealer = ShadowsocksSealer(cipher: cipher, master: cipher.masterKey(password: "right"), salt: ShadowsocksSealer.randomSalt(cipher))
        var wire = ByteBuffer()
        try sealer.seal(ByteBuffer(string: "payload"), into: &wire)
        var wrong = ShadowsocksOpener(cipher: cipher, master: cipher.masterKey(password: "wrong"))
        #expect(throws: ShadowsocksOpener.Failure.self) { try wrong.open(wire) }
        var tampered = Array(wire.readableBytesView)
        tampered[tampered.count - 20] ^= 1
        var opener = ShadowsocksOpener(cipher: cipher, master: cipher.masterKey(password: "right"))
        #expect(throws: ShadowsocksOpener.Failure.self) { try opener.open(ByteBuffer(bytes: tampered)) }
    }

    @Test func dataDecodedAfterTheAddressButBeforeTheTargetIsKept() throws {
        // One socket read can yield several decrypted chunks: the address, then data, before the target is up.
        let channel = EmbeddedChannel()
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let negotiation = AddressHeaderNegotiation()
        let destination = negotiation.begin(on: channel)
        var header = SOCKSAddressForm.encode(Destination(host: "10.0.0.1", port: 80))
        header.writeString("first ")
        try channel.writeInbound(header)
        try channel.writeInbound(ByteBuffer(string: "second "))
        try channel.writeInbound(ByteBuffer(string: "third"))
        #expect(try destination.wait() == Destination(host: "10.0.0.1", port: 80))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil, "nothing passes before the target is connected")
        negotiation.succeed(target: channel)
        #expect(try channel.readInbound(as: ByteBuffer.self).map { String(buffer: $0) } == "first second third")
    }
}
