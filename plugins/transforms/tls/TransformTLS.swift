import NIOCore
import NIOSSL
import NIOTLS
import WeirCore

/// `transform.tls`: TLS 1.2/1.3 (swift-nio-ssl). `side: server` terminates TLS on accepted connections;
/// `side: client` speaks TLS towards the target.
public struct TransformTLSConfig: StageConfig {
    public enum Side: String, Sendable, CaseIterable {
        case client, server
    }

    public enum Version: String, Sendable, CaseIterable {
        case tls12 = "1.2"
        case tls13 = "1.3"

        var nio: TLSVersion { self == .tls12 ? .tlsv12 : .tlsv13 }
    }

    public static let type = "transform.tls"
    public static let summary = "TLS 1.2/1.3: terminate it on accepted connections, or speak it towards the target."
    public static let role = StageRole.filter([.stream])
    public static let options = [
        OptionDoc("side", "client|server", "server: clients connect with TLS (terminated here); client: TLS towards the target (required)."),
        OptionDoc("certificate", "file", "PEM certificate chain, leaf first; side: server (required), side: client (mutual TLS, with key)."),
        OptionDoc("key", "file", "PEM private key of certificate (unencrypted)."),
        OptionDoc("client_ca", "file", default: "none", "side: server — require client certificates issued by these PEM CAs (mutual TLS)."),
        OptionDoc("ca", "file", default: "the system's trust store", "side: client — PEM CAs the server's certificate must chain to."),
        OptionDoc("server_name", "name", default: "the destination's name", "side: client — SNI and the name the server's certificate must carry; without it and without a destination name, the dialed address."),
        OptionDoc("verify", "bool", default: "true", "side: client — false accepts any server certificate (testing only)."),
        OptionDoc("min_version", "1.2|1.3", default: "1.2", "Oldest TLS version accepted."),
        OptionDoc("alpn", "list of names", default: "none", "Application protocols offered (client) or accepted (server), e.g. [http/1.1]."),
        OptionDoc(
            "handshake_timeout", "duration", default: "10s",
            "side: server — close a connection whose client has not completed the TLS handshake this long after connecting; side: client — give up on a server (a next hop, a tunnel) that has not completed it this long after the connection opened."),
    ]
    public static var sample: String { String(decoding: PackageResources.transform_tls_sample_yaml, as: UTF8.self) }

    public let side: Side
    public let serverName: String?
    let context: NIOSSLContext
    /// Digest of the certificate and key files: part of the fingerprint, so SIGHUP reloads renewed files.
    let filesDigest: String
    /// The certificate files read (certificate, client_ca, ca), for their expiry metric.
    public let certificates: [LoadedCertificate]
    /// How long the other end may take to complete the handshake (a client, or on side: client the server).
    let handshakeTimeout: Duration

    public var contentFingerprint: String { filesDigest }

    public static func decode(_ options: ConfigMapping) -> TransformTLSConfig? {
        guard let sideValue = options.required("side"), let side = sideValue.oneOf(Side.self) else {
            for key in ["certificate", "key", "client_ca", "ca", "server_name", "verify", "min_version", "alpn", "handshake_timeout"] {
                _ = options.optional(key)
            }
            return nil
        }
        var files = PEMFiles()
        var ok = true
        func only(_ key: String, on wanted: Side) -> ConfigValue? {
            guard let value = options.optional(key) else { return nil }
            guard side == wanted else {
                value.error("\(key) only applies to side: \(wanted.rawValue)")
                ok = false
                return nil
            }
            return value
        }

        let certificateValue = options.optional("certificate")
        let keyValue = options.optional("key")
        let chain = certificateValue.map { files.certificates($0) }
        let key = keyValue.map { files.privateKey($0) }
        if chain.map({ $0 == nil }) == true || key.map({ $0 == nil }) == true { ok = false }
        switch (certificateValue, keyValue) {
        case (nil, nil) where side == .server:
            options.value.error("side: server needs certificate and key")
            ok = false
        case (.some, nil):
            options.value.error("certificate needs key")
            ok = false
        case (nil, .some):
            options.value.error("key needs certificate")
            ok = false
        default: break
        }
        let clientCA = only("client_ca", on: .server).map { files.certificates($0) }
        let ca = only("ca", on: .client).map { files.certificates($0) }
        if clientCA.map({ $0 == nil }) == true || ca.map({ $0 == nil }) == true { ok = false }
        let serverNameValue = only("server_name", on: .client)
        let serverName = serverNameValue.map { value -> String? in
            guard let name = value.string, !name.isEmpty, (try? HostPort.parse(name, defaultPort: 443))?.host == name else {
                value.error("must be a host name")
                return nil
            }
            return name
        }
        let verify = only("verify", on: .client).map { $0.bool } ?? true
        let handshakeTimeout = ConnectionOptions.handshakeTimeout(options)
        let minVersion = options.optional("min_version", default: Version.tls12) { $0.oneOf(Version.self) }
        let alpnValue = options.optional("alpn")
        let alpn = alpnValue.map { value -> [String]? in
            guard let items = value.sequence else { return nil }
            let names = items.compactMap(\.string)
            return names.count == items.count && !names.contains(where: \.isEmpty) ? names : nil
        }
        guard ok, let minVersion, let verify, let handshakeTimeout else { return nil }
        if let serverName, serverName == nil { return nil }
        if let alpn, alpn == nil {
            alpnValue?.error("must be a list of protocol names")
            return nil
        }
        // Every value present was read without error: unwrap the "present but invalid" layer.
        let identity = (chain ?? nil).flatMap { chain in (key ?? nil).map { (chain, $0) } }

        var tls: TLSConfiguration
        switch side {
        case .server:
            guard let (chain, key) = identity else { return nil }
            tls = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
            if let clientCA = clientCA ?? nil {
                tls.trustRoots = .certificates(clientCA)
                tls.certificateVerification = .noHostnameVerification
            }
        case .client:
            tls = TLSConfiguration.makeClientConfiguration()
            if let ca = ca ?? nil { tls.trustRoots = .certificates(ca) }
            tls.certificateVerification = verify ? .fullVerification : .none
            if let (chain, key) = identity {
                tls.certificateChain = chain.map { .certificate($0) }
                tls.privateKey = .privateKey(key)
            }
        }
        tls.minimumTLSVersion = minVersion.nio
        tls.applicationProtocols = (alpn ?? nil) ?? []
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: tls)
        } catch {
            (keyValue ?? options.value).error("TLS setup failed (does the key belong to the certificate?): \(error)")
            return nil
        }
        return TransformTLSConfig(
            side: side, serverName: serverName ?? nil, context: context, filesDigest: files.fingerprint, certificates: files.loaded,
            handshakeTimeout: handshakeTimeout)
    }

    public func makeStage(_ context: StageContext) -> any Stage { TransformTLS(config: self, metrics: context.metrics) }
}

struct TransformTLS: StreamFilter {
    let config: TransformTLSConfig
    let metrics: PipelineMetrics

    func acceptHandlers(for connection: ConnectionInfo) -> [any ChannelHandler] {
        config.side == .server ? [NIOSSLServerHandler(context: config.context), label(), TLSHandshakeReport()] : []
    }

    var acceptOpening: OpeningStep? {
        guard config.side == .server else { return nil }
        return OpeningStep(stage: TransformTLSConfig.type, timeout: TimeAmount(config.handshakeTimeout), completion: .reported)
    }

    func handlers(for connection: ConnectionInfo) -> StreamFilterHandlers {
        guard config.side == .client else { return StreamFilterHandlers() }
        return StreamFilterHandlers(targetSide: [
            clientHandler(serverName: serverName(connection)),
            TLSClientHandshakeDeadline(timeout: TimeAmount(config.handshakeTimeout), metrics: metrics),
            label(),
        ])
    }

    /// Handshake and record errors are counted as `transform.tls`/`tls_failed`.
    private func label() -> StageFailureLabel { StageFailureLabel(stage: TransformTLSConfig.type, reason: "tls_failed", metrics: metrics) }

    /// NIOSSL refuses names it cannot send as SNI (too long, a NUL byte); such a destination is checked like
    /// an address, which fails unless the certificate names it — never an unchecked connection.
    private func clientHandler(serverName: String?) -> NIOSSLClientHandler {
        if let serverName, let handler = try? NIOSSLClientHandler(context: config.context, serverHostname: serverName) {
            return handler
        }
        // swift-format-ignore: NeverUseForceTry
        return try! NIOSSLClientHandler(context: config.context, serverHostname: nil)  // throws only for a bad name
    }

    /// The configured name, else the destination's when it is a name (an address is checked against the
    /// certificate by NIOSSL from the connected peer instead, and never sent as SNI).
    private func serverName(_ connection: ConnectionInfo) -> String? {
        if let name = config.serverName { return name }
        guard let host = connection.destination?.host, (try? SocketAddress(ipAddress: host, port: 0)) == nil else { return nil }
        return host
    }
}

/// Behind the server side's TLS handler: tells the connection's opening guard that the handshake completed,
/// then leaves.
final class TLSHandshakeReport: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            context.openingCompleted(stage: TransformTLSConfig.type)
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Behind the client side's TLS handler: closes the connection when the server has not completed the
/// handshake within `handshake_timeout` of the connection opening (`transform.tls`/`handshake_timeout`), then
/// leaves once it completes. A peer that accepts the TCP connection and says nothing — a hung next hop, or
/// anything that dialed a reverse tunnel's socket — otherwise held every connection waiting on it until the
/// carrier's keepalive gave up (30 s).
final class TLSClientHandshakeDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let timeout: TimeAmount
    private let metrics: PipelineMetrics
    private var deadline = ChannelDeadline()

    init(timeout: TimeAmount, metrics: PipelineMetrics) {
        self.timeout = timeout
        self.metrics = metrics
    }

    func handlerAdded(context: ChannelHandlerContext) {
        deadline.arm(timeout, on: context) { [metrics] in
            metrics.error(stage: TransformTLSConfig.type, reason: "handshake_timeout")
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) { deadline.cancel() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            deadline.cancel()
            context.fireUserInboundEventTriggered(event)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline.cancel()
        context.fireChannelInactive()
    }
}
