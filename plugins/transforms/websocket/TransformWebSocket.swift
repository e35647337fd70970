import NIOCore
import NIOWebSocket
import WeirCore

/// `transform.websocket`: the stream carried in RFC 6455 binary frames after an HTTP/1.1 upgrade, so it passes
/// HTTP reverse proxies and CDNs that only let web traffic through.
public struct TransformWebSocketConfig: StageConfig {
    public enum Side: String, Sendable, CaseIterable {
        case client, server
    }

    public static let type = "transform.websocket"
    public static let summary = "Carry the stream in WebSocket frames (RFC 6455) after an HTTP upgrade with a configurable path and Host."
    public static let role = StageRole.filter([.stream])
    public static let options = [
        OptionDoc("side", "client|server", "server: accept WebSocket upgrades from clients; client: upgrade towards the target (required)."),
        OptionDoc("path", "string", default: "/", "Request path; the server answers 404 to others (a query string is ignored)."),
        OptionDoc("host", "string", "side: client — the Host header, which reverse proxies route by (required on the client)."),
        OptionDoc("headers", "map", default: "none", secret: true, "side: client — extra request headers (User-Agent, a proxy's auth token)."),
        OptionDoc("max_frame", "bytes", default: "1048576", "Largest frame accepted from the peer; a larger one closes the connection."),
        OptionDoc("handshake_timeout", "duration", default: "10s", "side: server — close a connection whose client has not completed its upgrade request this long after connecting."),
    ]
    public static var sample: String { String(decoding: PackageResources.transform_websocket_sample_yaml, as: UTF8.self) }

    public let side: Side
    public let path: String
    public let host: String?
    public let headers: [(String, String)]
    public let maxFrame: Int
    /// side: server — how long a client may take to send its upgrade request.
    let handshakeTimeout: Duration

    public static func decode(_ options: ConfigMapping) -> TransformWebSocketConfig? {
        let side = options.required("side")?.oneOf(Side.self)
        let path = options.optional("path", default: "/") { value -> String? in
            guard let text = value.string, text.hasPrefix("/"), !text.contains(where: { $0 == " " || $0.isNewline }) else {
                value.error("must be a path starting with / (no spaces)")
                return nil
            }
            return text
        }
        let hostValue = options.optional("host")
        let host = hostValue.map { value -> String? in
            guard let text = value.string, !text.isEmpty, !text.contains(where: { $0 == " " || $0.isNewline }) else {
                value.error("must be a host name, optionally with :port")
                return nil
            }
            return text
        }
        let headersValue = options.optional("headers")
        let headers = headersValue.map { value -> [(String, String)]? in
            guard let map = value.mapping else { return nil }
            var headers: [(String, String)] = []
            for entry in map.allEntries() {
                guard let text = entry.value.string else { return nil }
                let reserved = ["host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version"]
                guard !reserved.contains(entry.key.lowercased()), !entry.key.contains(where: { $0 == ":" || $0.isWhitespace }),
                    !text.contains(where: \.isNewline)
                else {
                    entry.value.error("\(entry.key) cannot be set here")
                    return nil
                }
                headers.append((entry.key, text))
            }
            return headers
        }
        let maxFrame = options.optional("max_frame", default: 1 << 20) { $0.int(in: 1024...(1 << 30)) }
        let timeoutValue = options.optional("handshake_timeout")
        let handshakeTimeout = ConnectionOptions.handshakeTimeout(timeoutValue)
        guard let side, let path, let maxFrame, let handshakeTimeout else { return nil }
        if let host, host == nil { return nil }
        if let headers, headers == nil { return nil }
        switch side {
        case .client where hostValue == nil:
            options.value.error("side: client needs host (the Host header)")
            return nil
        case .server where hostValue != nil || headersValue != nil:
            (hostValue ?? headersValue)?.error("\(hostValue != nil ? "host" : "headers") only applies to side: client")
            return nil
        case .client where timeoutValue != nil:
            timeoutValue?.error("handshake_timeout only applies to side: server")
            return nil
        default:
            return TransformWebSocketConfig(
                side: side, path: path, host: host ?? nil, headers: (headers ?? nil) ?? [], maxFrame: maxFrame, handshakeTimeout: handshakeTimeout)
        }
    }

    public func makeStage(_ context: StageContext) -> any Stage { TransformWebSocket(config: self, metrics: context.metrics) }
}

struct TransformWebSocket: StreamFilter {
    let config: TransformWebSocketConfig
    let metrics: PipelineMetrics

    func acceptHandlers(for connection: ConnectionInfo) -> [any ChannelHandler] {
        guard config.side == .server else { return [] }
        return [WebSocketServerHandshakeHandler(path: config.path)] + frameHandlers(masks: false)
    }

    var acceptOpening: OpeningStep? {
        guard config.side == .server else { return nil }
        return OpeningStep(stage: TransformWebSocketConfig.type, timeout: TimeAmount(config.handshakeTimeout), completion: .reported)
    }

    func handlers(for connection: ConnectionInfo) -> StreamFilterHandlers {
        guard config.side == .client, let host = config.host else { return StreamFilterHandlers() }
        let handshake = WebSocketClientHandshakeHandler(path: config.path, host: host, headers: config.headers)
        return StreamFilterHandlers(targetSide: [handshake] + frameHandlers(masks: true))
    }

    /// Nearest the socket first: NIOWebSocket's frame decoder, then bytes to frames and back (encoding frames
    /// itself, see WebSocketFraming).
    private func frameHandlers(masks: Bool) -> [any ChannelHandler] {
        [
            ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: config.maxFrame)), WebSocketStreamHandler(masks: masks),
            StageFailureLabel(stage: TransformWebSocketConfig.type, reason: "websocket_failed", metrics: metrics),
        ]
    }
}
