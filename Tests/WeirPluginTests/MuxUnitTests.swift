import NIOCore
import NIOEmbedded
import NIOHPACK
import NIOHTTP2
import Testing
import WeirCore

@testable import WeirTransforms

/// transform.mux without sockets: which carrier a stream goes on, and one stream's frames as a byte stream.
@Suite struct MuxUnitTests {
    let start = NIODeadline.uptimeNanoseconds(1_000_000_000_000)

    @Test func streamsFillTheOldestCarrierFirst() {
        var book = CarrierBook(maxStreams: 2)
        #expect(book.reserve() == .dial(0))
        #expect(book.reserve() == .use(0), "a carrier still being dialed takes streams too")
        #expect(book.reserve() == .dial(1), "full: another carrier")
        book.release(0, at: start)
        #expect(book.reserve() == .use(0), "room on the oldest again")
        book.drain(1)
        #expect(book.reserve() == .dial(2), "a carrier the peer is closing takes no new streams")
        book.remove(0)
        #expect(book.reserve() == .use(2))
    }

    @Test func aCarrierIsIdleOnlyAfterItsLastStreamForTheTimeout() {
        var book = CarrierBook(maxStreams: 10)
        _ = book.reserve()
        _ = book.reserve()
        book.release(0, at: start)
        #expect(!book.isIdle(0, at: start + .seconds(100), timeout: .seconds(5)), "one stream still open")
        book.release(0, at: start + .seconds(1))
        #expect(!book.isIdle(0, at: start + .seconds(5), timeout: .seconds(5)))
        #expect(book.isIdle(0, at: start + .seconds(6), timeout: .seconds(5)))
        _ = book.reserve()
        #expect(!book.isIdle(0, at: start + .seconds(60), timeout: .seconds(5)), "busy again")
    }

    @Test func clientStreamAsksForItsDestinationAndCarriesBytesWithHalfClose() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(MuxStreamHandler(opening: .request(HostPort(host: "example.net", port: 443))))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        guard case .headers(let request) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) else {
            Issue.record("no request")
            return
        }
        #expect(request.headers.first(name: ":method") == "CONNECT")
        #expect(request.headers.first(name: ":authority") == "example.net:443")

        // Bytes written become DATA frames; half-close is END_STREAM.
        try channel.writeAndFlush(ByteBuffer(string: "hello")).wait()
        guard case .data(let data) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self), case .byteBuffer(let sent) = data.data else {
            Issue.record("no data frame")
            return
        }
        #expect(String(buffer: sent) == "hello" && !data.endStream)
        try channel.close(mode: .output).wait()
        guard case .data(let end) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) else {
            Issue.record("no END_STREAM")
            return
        }
        #expect(end.endStream && end.data.readableBytes == 0)
    }

    @Test func nothingIsDeliveredUntilThePipelineReads() throws {
        let channel = EmbeddedChannel()
        let reads = ReadRecorder()
        try channel.pipeline.syncOperations.addHandlers([MuxStreamHandler(opening: .request(nil)), reads])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        guard case .headers(let request) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) else {
            Issue.record("no request")
            return
        }
        #expect(request.headers.first(name: ":authority") == MuxStreamHandler.noDestination)

        try channel.writeInbound(HTTP2Frame.FramePayload.headers(.init(headers: [":status": "200"])))
        try channel.writeInbound(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: "early")))))
        try channel.writeInbound(HTTP2Frame.FramePayload.data(.init(data: .byteBuffer(ByteBuffer(string: " bytes")), endStream: true)))
        #expect(reads.received.isEmpty && !reads.inputClosed, "held until asked for")
        channel.read()
        #expect(reads.received == "early bytes")
        #expect(reads.inputClosed, "END_STREAM is the end of input, after the data")
    }

    @Test func serverAnswersTheRequestAndHandsTheStreamOnWithItsDestination() throws {
        let channel = EmbeddedChannel()
        let handedOver = HandOverRecorder()
        try channel.pipeline.syncOperations.addHandler(MuxStreamHandler(opening: .accepted { _, destination in handedOver.destination = destination }))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(HTTP2Frame.FramePayload.headers(.init(headers: [":method": "CONNECT", ":authority": "[2001:db8::1]:8443"])))
        guard case .headers(let answer) = try channel.readOutbound(as: HTTP2Frame.FramePayload.self) else {
            Issue.record("no answer")
            return
        }
        #expect(answer.headers.first(name: ":status") == "200")
        #expect(handedOver.destination == HostPort(host: "2001:db8::1", port: 8443))
    }
}

private final class ReadRecorder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    var received = ""
    var inputClosed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { received += String(buffer: unwrapInboundIn(data)) }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .inputClosed = event as? ChannelEvent { inputClosed = true }
    }
}

private final class HandOverRecorder: @unchecked Sendable {
    var destination: HostPort?
}
