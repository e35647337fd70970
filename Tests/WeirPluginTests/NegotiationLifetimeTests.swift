import NIOCore
import NIOEmbedded
import Testing
import WeirCore
import WeirStages

@testable import WeirListeners
@testable import WeirTransforms

/// A negotiation keeps its channel context while it works; once its connection closes, nothing may keep the
/// two alive (they refer to each other). Found by fuzzing: every negotiated connection leaked its handler,
/// context and buffered bytes, so a port scanner grew the agent's memory without bound.
@Suite struct NegotiationLifetimeTests {
    static let loader = ConfigLoader(registry: BuiltinStages.registry)

    static func negotiation(_ stages: String, index: Int) throws -> any StreamNegotiation {
        let spec = try loader.loadPipelines(yaml: "pipelines:\n  p:\n    stages:\n" + stages, name: "p.yaml")[0]
        let stage = spec.stages[index].config.makeStage(StageContext(
            pipeline: "p", stageIndex: index, metrics: WeirMetrics().pipeline("p"), listener: spec.listener?.config as? any ListenerConfig,
            environment: StageEnvironment(stateDirectory: "/nonexistent", bpfPinDirectory: "/nonexistent")))
        let info = ConnectionInfo(pipeline: "p", client: nil, local: nil, eventLoop: EmbeddedEventLoop())
        if let listener = stage as? any NegotiatingStreamListener { return listener.negotiation(for: info) }
        return try #require((stage as? any StreamFilter)?.negotiation(for: info))
    }

    static let cases: [(String, String, Int, [UInt8])] = [
        ("listen.socks5", "      - {type: listen.socks5, address: \"127.0.0.1:1080\"}\n      - {type: connect.tcp}\n", 0, [5, 1]),
        ("listen.http", "      - {type: listen.http, address: \"127.0.0.1:3128\"}\n      - {type: connect.tcp}\n", 0, Array("CONNECT a:1 HT".utf8)),
        ("listen.tls_sni", "      - {type: listen.tls_sni, address: \"127.0.0.1:443\", routes: {a.example: \"127.0.0.1:1\"}}\n      - {type: connect.tcp}\n", 0, [0x16, 3, 1]),
        ("transform.aead", "      - {type: listen.tcp, address: \"127.0.0.1:1\"}\n      - {type: transform.aead, side: server, password: x}\n      - {type: connect.tcp}\n", 1, [3, 11]),
    ]

    @Test("A negotiation is freed once its connection closed mid-opening", arguments: 0..<4)
    func freedAfterClose(_ index: Int) throws {
        let (name, stages, stageIndex, partial) = Self.cases[index]
        weak var released: AnyObject?
        do {
            let channel = EmbeddedChannel()
            let negotiation = try Self.negotiation(stages, index: stageIndex)
            released = negotiation
            _ = negotiation.begin(on: channel)
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            // For the AEAD server the bytes reach the negotiation already decrypted; here it is alone.
            try channel.writeInbound(ByteBuffer(bytes: partial))
            _ = try channel.finish(acceptAlreadyClosed: true)
        }
        #expect(released == nil, "\(name): the negotiation outlived its closed connection")
    }
}
