import NIOCore
import NIOEmbedded
import Testing

@testable import WeirCore

/// What an accepted channel reads before its glue is in place (NIO reads a socket to its EOF even with
/// autoRead off) is kept and passed on in order once released.
@Suite struct EarlyInputHoldTests {
    final class Recorder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        var events: [String] = []

        func channelRead(context: ChannelHandlerContext, data: NIOAny) { events.append("read " + String(buffer: unwrapInboundIn(data))) }
        func channelReadComplete(context: ChannelHandlerContext) { events.append("complete") }
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .inputClosed = event as? ChannelEvent { events.append("end") }
        }
    }

    @Test func keepsBytesAndEndOfInputUntilReleasedThenPassesThemOnInOrder() throws {
        let channel = EmbeddedChannel()
        let hold = EarlyInputHold()
        let recorder = Recorder()
        try channel.pipeline.syncOperations.addHandlers([hold, recorder])
        try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.0\r\n\r\n"))
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        #expect(recorder.events.isEmpty, "nothing passes before the glue is there")

        hold.release()
        #expect(recorder.events == ["read GET / HTTP/1.0\r\n\r\n", "complete", "end"])
        try channel.writeInbound(ByteBuffer(string: "more"))
        #expect(recorder.events.last == "complete" && recorder.events.contains("read more"), "after release everything passes at once")
    }
}
