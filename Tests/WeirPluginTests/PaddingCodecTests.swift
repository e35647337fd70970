import NIOCore
import Testing

@testable import WeirTransforms

/// The padding frames without I/O: round trips in any split, bounds kept, bad frames refused.
@Suite struct PaddingCodecTests {
    @Test func framesRoundTripFedByteByByte() throws {
        var framer = PaddingFramer(padding: 3...40)
        let message = ByteBuffer(bytes: (0..<40_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
        var wire = ByteBuffer()
        framer.frame(message, into: &wire)
        #expect(wire.readableBytes >= message.readableBytes + 3 * (4 + 3), "three frames of at most 16383 bytes, each padded")
        var deframer = PaddingDeframer(maxPadding: 40)
        var out = ByteBuffer()
        for byte in wire.readableBytesView {
            var piece = try deframer.feed(ByteBuffer(bytes: [byte]))
            out.writeBuffer(&piece)
        }
        #expect(out == message)
    }

    @Test func paddingStaysWithinItsBoundsAndVaries() {
        var framer = PaddingFramer(padding: 16...512)
        var lengths: Set<Int> = []
        for _ in 0..<50 {
            var wire = ByteBuffer()
            framer.frame(ByteBuffer(string: "hello"), into: &wire)
            let pad = Int(wire.getInteger(at: 2, as: UInt16.self)!)
            #expect((16...512).contains(pad))
            #expect(wire.readableBytes == 4 + 5 + pad)
            lengths.insert(wire.readableBytes)
        }
        #expect(lengths.count > 10, "sizes on the wire vary")
    }

    @Test func framesBeyondTheBoundsAreRefused() {
        var deframer = PaddingDeframer(maxPadding: 255)
        var frame = ByteBuffer()
        frame.writeInteger(UInt16(5))
        frame.writeInteger(UInt16(256))
        #expect(throws: PaddingDeframer.Malformed.self) { try deframer.feed(frame) }
        var notPadded = PaddingDeframer(maxPadding: 255)
        #expect(throws: PaddingDeframer.Malformed.self) { try notPadded.feed(ByteBuffer(string: "GET / HTTP/1.1\r\n")) }
    }
}
