import NIOCore
import NIOWebSocket

/// Frame encoding and masking done a word at a time: NIOWebSocket masks byte by byte, which cost two thirds of
/// a relay's CPU (every client-to-server byte is masked once and unmasked once).
enum WebSocketFraming {
    /// Appends one final frame: header, then the payload masked with `maskKey` when given (client side).
    static func encode(_ opcode: WebSocketOpcode, payload: ByteBuffer, maskKey: WebSocketMaskingKey?, into output: inout ByteBuffer) {
        let length = payload.readableBytes
        output.reserveCapacity(minimumWritableBytes: 14 + length)
        output.writeInteger(UInt8(0x80) | UInt8(webSocketOpcode: opcode))
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        switch length {
        case ..<126:
            output.writeInteger(maskBit | UInt8(length))
        case ..<65536:
            output.writeInteger(maskBit | 126)
            output.writeInteger(UInt16(length))
        default:
            output.writeInteger(maskBit | 127)
            output.writeInteger(UInt64(length))
        }
        guard let maskKey else {
            output.writeImmutableBuffer(payload)
            return
        }
        output.writeBytes(maskKey)
        let start = output.writerIndex
        output.writeImmutableBuffer(payload)
        mask(&output, from: start, count: length, key: maskKey)
    }

    /// The payload of a received frame, unmasked when the peer masked it.
    static func payload(of frame: WebSocketFrame) -> ByteBuffer {
        guard let key = frame.maskKey else { return frame.data }
        var data = frame.data
        mask(&data, from: data.readerIndex, count: data.readableBytes, key: key)
        return data
    }

    /// XORs `count` bytes starting at `from` with the repeating key, eight bytes at a time.
    static func mask(_ buffer: inout ByteBuffer, from start: Int, count: Int, key: WebSocketMaskingKey) {
        guard count > 0 else { return }
        let keyBytes = Array(key)
        // Little-endian load of bytes k0 k1 k2 k3 k0 k1 k2 k3, so word XOR matches byte-wise XOR.
        let word32 = UInt32(keyBytes[0]) | UInt32(keyBytes[1]) << 8 | UInt32(keyBytes[2]) << 16 | UInt32(keyBytes[3]) << 24
        let word = UInt64(word32) | UInt64(word32) << 32
        let offset = start - buffer.readerIndex
        buffer.withUnsafeMutableReadableBytes { raw in
            var index = offset
            let end = offset + count
            while index + 8 <= end {
                let value = raw.loadUnaligned(fromByteOffset: index, as: UInt64.self)
                raw.storeBytes(of: (UInt64(littleEndian: value) ^ word).littleEndian, toByteOffset: index, as: UInt64.self)
                index += 8
            }
            while index < end {
                raw[index] ^= keyBytes[(index - offset) & 3]
                index += 1
            }
        }
    }
}
