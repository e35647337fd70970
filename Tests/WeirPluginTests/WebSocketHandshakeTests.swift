import NIOCore
import NIOEmbedded
import NIOWebSocket
import Testing

@testable import WeirTransforms

/// The RFC 6455 opening handshake as pure text in, text out.
@Suite struct WebSocketHandshakeTests {
    @Test func acceptValueMatchesTheRFCExample() {
        // RFC 6455 section 1.3.
        #expect(WebSocketHandshake.acceptValue(key: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func headReaderWaitsForTheEmptyLineAndKeepsWhatFollows() throws {
        let text = "GET /tunnel HTTP/1.1\r\nHost: example\r\nUpgrade:  websocket \r\n\r\n\u{82}\u{01}x"
        var reader = HTTPHeadReader()
        var outcome = HTTPHeadReader.Outcome.needMore
        for byte in Array(text.utf8) {
            #expect(outcome == .needMore)
            outcome = reader.feed(ByteBuffer(bytes: [byte]))
            if case .head = outcome { break }
        }
        guard case .head(let head, _) = outcome else {
            Issue.record("no head: \(outcome)")
            return
        }
        #expect(head.startLine == "GET /tunnel HTTP/1.1")
        #expect(head.field("upgrade") == "websocket")
        // Fed whole, the bytes after the head are left over.
        var whole = HTTPHeadReader()
        guard case .head(_, let leftover) = whole.feed(ByteBuffer(string: text)) else {
            Issue.record("no head")
            return
        }
        #expect(Array(leftover.readableBytesView) == Array("\u{82}\u{01}x".utf8))
    }

    @Test func headReaderRefusesOversizedOrMalformedHeads() {
        var big = HTTPHeadReader()
        #expect(big.feed(ByteBuffer(string: "GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 20_000))) == .invalid("header section larger than 16384 bytes"))
        var folded = HTTPHeadReader()
        #expect(folded.feed(ByteBuffer(string: "GET / HTTP/1.1\r\n folded\r\n\r\n")) == .invalid("malformed header line"))
    }

    func head(_ text: String) -> HTTPHead {
        var reader = HTTPHeadReader()
        guard case .head(let head, _) = reader.feed(ByteBuffer(string: text + "\r\n\r\n")) else { return HTTPHead(startLine: "", fields: []) }
        return head
    }

    @Test func serverAnswersAValidUpgradeWith101() {
        let request = head("GET /tunnel?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13")
        guard case .upgrade(let response) = WebSocketHandshake.answer(request, path: "/tunnel") else {
            Issue.record("not upgraded")
            return
        }
        #expect(response.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
        #expect(response.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))
        #expect(response.hasSuffix("\r\n\r\n"))
    }

    @Test func serverRefusesWhatIsNotAnUpgradeToItsPath() {
        let fields = "Host: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: abc\r\nSec-WebSocket-Version: 13"
        func status(_ request: String) -> Int? {
            if case .refuse(let status, _) = WebSocketHandshake.answer(head(request), path: "/tunnel") { return status }
            return nil
        }
        #expect(status("GET /other HTTP/1.1\r\n" + fields) == 404)
        #expect(status("POST /tunnel HTTP/1.1\r\n" + fields) == 405)
        #expect(status("GET /tunnel HTTP/1.1\r\nHost: h") == 400)
        #expect(status("GET /tunnel HTTP/1.1\r\n" + fields.replacingOccurrences(of: "Version: 13", with: "Version: 8")) == 426)
        #expect(status("GET /tunnel\r\n" + fields) == 400)
        #expect(status("GET /tunnel HTTP/1.1\r\n" + fields) == nil)
    }

    @Test func clientChecksTheServersAnswer() {
        let key = "dGhlIHNhbXBsZSBub25jZQ=="
        let good = head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        #expect(WebSocketHandshake.problem(with: good, key: key) == nil)
        let wrongAccept = head("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA")
        #expect(WebSocketHandshake.problem(with: wrongAccept, key: key) == "wrong Sec-WebSocket-Accept")
        let notFound = head("HTTP/1.1 404 Not Found\r\nContent-Length: 0")
        #expect(WebSocketHandshake.problem(with: notFound, key: key) == "the server answered 404 Not Found instead of 101")
        let request = WebSocketHandshake.clientRequest(path: "/t", host: "h.example:443", key: key, headers: [("User-Agent", "weir")])
        #expect(request == "GET /t HTTP/1.1\r\nHost: h.example:443\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\nUser-Agent: weir\r\n\r\n")
    }
}

/// weir's own frame encoder and word-wise masking, checked with NIOWebSocket's decoder.
@Suite struct WebSocketFramingTests {
    @Test(arguments: [0, 1, 5, 125, 126, 127, 1000, 65535, 65536, 100_003])
    func framesDecodeToTheirPayload(length: Int) throws {
        let payload = ByteBuffer(bytes: (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        for key in [WebSocketMaskingKey?.none, [0x12, 0x34, 0xAB, 0xFF]] {
            var wire = ByteBuffer(string: "xy")  // a reader index that is not zero
            wire.moveReaderIndex(forwardBy: 2)
            WebSocketFraming.encode(.binary, payload: payload, maskKey: key, into: &wire)
            let channel = EmbeddedChannel(handler: ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 1 << 20)))
            try channel.writeInbound(wire)
            let frame = try #require(try channel.readInbound(as: WebSocketFrame.self))
            #expect(frame.fin && frame.opcode == .binary && frame.maskKey == key)
            #expect(frame.unmaskedData == payload, "NIOWebSocket's byte-wise unmasking agrees")
            #expect(WebSocketFraming.payload(of: frame) == payload)
            _ = try channel.finish()
        }
    }
}
