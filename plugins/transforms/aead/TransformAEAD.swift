import Crypto
import NIOCore
import WeirCore

/// `transform.aead`: pre-shared-key stream encryption, wire-compatible with Shadowsocks AEAD
/// (shadowsocks-libev `ss-server` / `ss-local`).
public struct TransformAEADConfig: StageConfig {
    public enum Side: String, Sendable, CaseIterable {
        case client, server
    }

    public static let type = "transform.aead"
    public static let summary = "Encrypt the stream with a pre-shared key, wire-compatible with Shadowsocks AEAD."
    public static let role = StageRole.filter([.stream])
    public static let options = [
        OptionDoc("side", "client|server", "server: decrypt what clients send (an exit, ss-server's role); client: encrypt towards the target (an entry, ss-local's role) (required)."),
        OptionDoc("password", "string", secret: true, "The pre-shared password both ends know (required)."),
        OptionDoc("cipher", "chacha20-ietf-poly1305|aes-256-gcm|aes-128-gcm", default: "chacha20-ietf-poly1305", "AEAD cipher; both ends must agree."),
        OptionDoc("target", "host:port", default: "the client's destination", "side: client — the address sent to the server when the listener's clients name none."),
        OptionDoc("handshake_timeout", "duration", default: "10s", "side: server — close a connection whose client has not sent the whole address header this long after connecting."),
    ]
    public static var sample: String { String(decoding: PackageResources.transform_aead_sample_yaml, as: UTF8.self) }

    public let side: Side
    public let cipher: ShadowsocksCipher
    let password: String
    public let target: HostPort?
    /// side: server — how long a client may take to send its address header.
    let handshakeTimeout: Duration

    public static func decode(_ options: ConfigMapping) -> TransformAEADConfig? {
        let side = options.required("side")?.oneOf(Side.self)
        let password = options.required("password").flatMap { value -> String? in
            guard let text = value.string else { return nil }
            guard !text.isEmpty else {
                value.error("must not be empty")
                return nil
            }
            return text
        }
        let cipher = options.optional("cipher", default: ShadowsocksCipher.chacha20IETFPoly1305) { $0.oneOf(ShadowsocksCipher.self) }
        let targetValue = options.optional("target")
        let target = targetValue.map { $0.parsed(HostPort.parse) }
        let timeoutValue = options.optional("handshake_timeout")
        let handshakeTimeout = ConnectionOptions.handshakeTimeout(timeoutValue)
        guard let side, let password, let cipher, let handshakeTimeout else { return nil }
        if let target, target == nil { return nil }
        if timeoutValue != nil, side == .client {
            timeoutValue?.error("handshake_timeout only applies to side: server")
            return nil
        }
        if target != nil, side == .server {
            targetValue?.error("target only applies to side: client")
            return nil
        }
        return TransformAEADConfig(side: side, cipher: cipher, password: password, target: target ?? nil, handshakeTimeout: handshakeTimeout)
    }

    /// The server side reads each connection's destination from the stream.
    public var namesDestination: Bool { side == .server }
    /// The client side sends each connection's destination, unless it has a fixed `target`.
    public var needsDestination: Bool { side == .client && target == nil }

    public func makeStage(_ context: StageContext) -> any Stage {
        TransformAEAD(config: self, master: cipher.masterKey(password: password), metrics: context.metrics)
    }
}

struct TransformAEAD: StreamFilter {
    let config: TransformAEADConfig
    let master: SymmetricKey
    let metrics: PipelineMetrics

    func acceptHandlers(for connection: ConnectionInfo) -> [any ChannelHandler] {
        config.side == .server ? [ShadowsocksAEADHandler(cipher: config.cipher, master: master, header: nil), label()] : []
    }

    func negotiation(for connection: ConnectionInfo) -> (any StreamNegotiation)? {
        config.side == .server ? AddressHeaderNegotiation() : nil
    }

    var acceptOpening: OpeningStep? {
        guard config.side == .server else { return nil }
        return OpeningStep(stage: TransformAEADConfig.type, timeout: TimeAmount(config.handshakeTimeout), completion: .negotiated)
    }

    func handlers(for connection: ConnectionInfo) -> StreamFilterHandlers {
        guard config.side == .client else { return StreamFilterHandlers() }
        let destination = connection.destination ?? config.target
        let header = destination.map(SOCKSAddressForm.encode)
        return StreamFilterHandlers(targetSide: [ShadowsocksAEADHandler(cipher: config.cipher, master: master, header: header), label()])
    }

    /// Streams that fail authentication are counted as `transform.aead`/`aead_failed`.
    private func label() -> StageFailureLabel { StageFailureLabel(stage: TransformAEADConfig.type, reason: "aead_failed", metrics: metrics) }
}
