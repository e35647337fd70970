import Crypto
import Foundation
import NIOCore

/// The head of an HTTP/1.1 message: start line and header fields.
struct HTTPHead: Equatable {
    var startLine: String
    var fields: [(name: String, value: String)]

    static func == (a: HTTPHead, b: HTTPHead) -> Bool {
        a.startLine == b.startLine && a.fields.map(\.name) == b.fields.map(\.name) && a.fields.map(\.value) == b.fields.map(\.value)
    }

    /// The first field's value by case-insensitive name.
    func field(_ name: String) -> String? {
        fields.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    /// The comma-separated tokens of every field of that name, lowercased ("Connection: keep-alive, Upgrade").
    func tokens(_ name: String) -> Set<String> {
        Set(
            fields.filter { $0.name.lowercased() == name.lowercased() }
                .flatMap { $0.value.split(separator: ",") }
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
    }
}

/// Collects bytes until a complete head (ending in an empty line) has arrived; what follows it is left over.
struct HTTPHeadReader {
    enum Outcome: Equatable {
        case needMore
        case head(HTTPHead, leftover: ByteBuffer)
        case invalid(String)
    }

    static let limit = 16 * 1024
    private var collected = ByteBuffer()

    mutating func feed(_ bytes: ByteBuffer) -> Outcome {
        var bytes = bytes
        collected.writeBuffer(&bytes)
        let view = collected.readableBytesView
        guard let end = Self.endOfHead(view) else {
            return collected.readableBytes > Self.limit ? .invalid("header section larger than \(Self.limit) bytes") : .needMore
        }
        let headLength = end - view.startIndex
        let text = collected.readString(length: headLength) ?? ""
        let leftover = collected.slice()
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        while lines.last == "" { lines.removeLast() }
        guard let startLine = lines.first, !startLine.isEmpty else { return .invalid("empty start line") }
        var fields: [(String, String)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":"), colon != line.startIndex, !line.first!.isWhitespace else {
                return .invalid("malformed header line")
            }
            fields.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
        }
        return .head(HTTPHead(startLine: startLine, fields: fields), leftover: leftover)
    }

    /// The index just past the first CRLFCRLF.
    private static func endOfHead(_ view: ByteBufferView) -> ByteBufferView.Index? {
        var index = view.startIndex
        while index + 3 < view.endIndex {
            if view[index] == 13, view[index + 1] == 10, view[index + 2] == 13, view[index + 3] == 10 { return index + 4 }
            index += 1
        }
        return nil
    }
}

/// The RFC 6455 opening handshake, both sides, as text in and text out.
enum WebSocketHandshake {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// Sec-WebSocket-Accept for a Sec-WebSocket-Key: base64(SHA-1(key + GUID)).
    static func acceptValue(key: String) -> String {
        Data(Insecure.SHA1.hash(data: Array((key + guid).utf8))).base64EncodedString()
    }

    /// A fresh Sec-WebSocket-Key: 16 random bytes, base64.
    static func randomKey() -> String {
        Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
    }

    static func clientRequest(path: String, host: String, key: String, headers: [(String, String)]) -> String {
        var lines = [
            "GET \(path) HTTP/1.1", "Host: \(host)", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: \(key)", "Sec-WebSocket-Version: 13",
        ]
        lines += headers.map { "\($0.0): \($0.1)" }
        return lines.joined(separator: "\r\n") + "\r\n\r\n"
    }

    /// The server's answer to a request head: the 101 response, or a refusal with its status.
    enum ServerAnswer: Equatable {
        case upgrade(response: String)
        case refuse(status: Int, response: String)
    }

    static func answer(_ request: HTTPHead, path: String) -> ServerAnswer {
        let parts = request.startLine.split(separator: " ")
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1.") else { return refusal(400, "Bad Request") }
        guard parts[0] == "GET" else { return refusal(405, "Method Not Allowed", extra: ["Allow: GET"]) }
        let requestPath = parts[1].split(separator: "?", maxSplits: 1).first.map(String.init) ?? ""
        guard requestPath == path else { return refusal(404, "Not Found") }
        guard request.tokens("Upgrade").contains("websocket"), request.tokens("Connection").contains("upgrade"),
            let key = request.field("Sec-WebSocket-Key"), !key.isEmpty
        else { return refusal(400, "Bad Request") }
        guard request.field("Sec-WebSocket-Version") == "13" else {
            return refusal(426, "Upgrade Required", extra: ["Sec-WebSocket-Version: 13"])
        }
        let response = [
            "HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Accept: \(acceptValue(key: key))",
        ]
        return .upgrade(response: response.joined(separator: "\r\n") + "\r\n\r\n")
    }

    private static func refusal(_ status: Int, _ reason: String, extra: [String] = []) -> ServerAnswer {
        let lines = ["HTTP/1.1 \(status) \(reason)", "Content-Length: 0", "Connection: close"] + extra
        return .refuse(status: status, response: lines.joined(separator: "\r\n") + "\r\n\r\n")
    }

    /// Why the server's response does not complete the handshake, or nil when it does.
    static func problem(with response: HTTPHead, key: String) -> String? {
        let parts = response.startLine.split(separator: " ", maxSplits: 2)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1.") else { return "not an HTTP response" }
        guard parts[1] == "101" else { return "the server answered \(parts.dropFirst().joined(separator: " ")) instead of 101" }
        guard response.tokens("Upgrade").contains("websocket"), response.tokens("Connection").contains("upgrade") else {
            return "the 101 response does not upgrade to websocket"
        }
        guard response.field("Sec-WebSocket-Accept") == acceptValue(key: key) else { return "wrong Sec-WebSocket-Accept" }
        return nil
    }
}
