import NIOCore

/// The padding wire format: frames of `data length` (2 bytes, big-endian), `padding length` (2 bytes), the
/// data, then that many random bytes. Both directions use it; each side pads what it sends.
enum PaddingFormat {
    static let headerLength = 4
    static let maxData = 0x3FFF
}

/// Cuts what is written into frames of at most `PaddingFormat.maxData` bytes, each with random padding.
struct PaddingFramer {
    let padding: ClosedRange<Int>
    var random = SystemRandomNumberGenerator()

    mutating func frame(_ data: ByteBuffer, into output: inout ByteBuffer) {
        var data = data
        repeat {
            let chunk = data.readSlice(length: min(data.readableBytes, PaddingFormat.maxData)) ?? ByteBuffer()
            let pad = Int.random(in: padding, using: &random)
            output.reserveCapacity(minimumWritableBytes: PaddingFormat.headerLength + chunk.readableBytes + pad)
            output.writeInteger(UInt16(chunk.readableBytes))
            output.writeInteger(UInt16(pad))
            output.writeImmutableBuffer(chunk)
            output.writeWithUnsafeMutableBytes(minimumWritableBytes: pad) { buffer in
                for index in 0..<pad { buffer[index] = UInt8.random(in: 0...255, using: &random) }
                return pad
            }
        } while data.readableBytes > 0
    }
}

/// Takes frames apart: bytes in any split, data out, padding dropped.
struct PaddingDeframer {
    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    private var pending = ByteBuffer()
    let maxPadding: Int

    init(maxPadding: Int) { self.maxPadding = maxPadding }

    /// The data of every frame completed by `bytes`.
    mutating func feed(_ bytes: ByteBuffer) throws -> ByteBuffer {
        var bytes = bytes
        pending.writeBuffer(&bytes)
        var output = ByteBuffer()
        while let dataLength = pending.getInteger(at: pending.readerIndex, as: UInt16.self),
            let padLength = pending.getInteger(at: pending.readerIndex + 2, as: UInt16.self)
        {
            guard dataLength <= PaddingFormat.maxData, padLength <= maxPadding else {
                throw Malformed(description: "frame with \(dataLength) data and \(padLength) padding bytes (the peer's padding differs, or this is not a padded stream)")
            }
            let total = PaddingFormat.headerLength + Int(dataLength) + Int(padLength)
            guard pending.readableBytes >= total else { break }
            pending.moveReaderIndex(forwardBy: PaddingFormat.headerLength)
            var data = pending.readSlice(length: Int(dataLength))!
            output.writeBuffer(&data)
            pending.moveReaderIndex(forwardBy: Int(padLength))
        }
        pending.discardReadBytes()
        return output
    }
}
