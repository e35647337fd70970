import Foundation
import NIOCore
import NIOEmbedded
import WeirCoordinatorProtocol
import WeirCore
import WeirStages

@testable import WeirCoordinator
@testable import WeirDNS
@testable import WeirEnforcers
@testable import WeirListeners
@testable import WeirTransforms

/// Every parser of untrusted bytes or text, each as a function of one input. A target must never crash, hang
/// or grow without bound, whatever the input; a thrown error or a refused connection is a correct answer.
enum FuzzTargets {
    static let all: [String: @Sendable ([UInt8]) -> Void] = [
        "config": config,
        "socks5": { opening($0, socks5) },
        "socks5-udp": socks5UDP,
        "http-connect": { opening($0, httpConnect) },
        "tls-sni": { opening($0, tlsSNI) },
        "aead": aead,
        "websocket": { opening($0, webSocket) },
        "padding": padding,
        "dns": dns,
        "dns-filter": dnsFilter,
        "coordinator-messages": coordinatorMessages,
        "coordinator-requests": coordinatorRequests,
    ]

    // MARK: - Configuration

    static let loader = ConfigLoader(registry: BuiltinStages.registry)

    /// A drop-in file as an agent or the coordinator's document API reads it.
    static func config(_ bytes: [UInt8]) {
        _ = try? loader.loadPipelines(yaml: String(decoding: bytes, as: UTF8.self), name: "fuzz.yaml")
    }

    // MARK: - Openings, through the stages' own handlers

    static let metrics = WeirMetrics().pipeline("fuzz")

    /// The stage of a one-pipeline document, built as the agent builds it.
    static func stage(_ yaml: String, index: Int) -> any Stage {
        let spec = try! loader.loadPipelines(yaml: yaml, name: "fuzz.yaml")[0]
        let listener = spec.listener?.config as? any ListenerConfig
        let context = StageContext(
            pipeline: spec.id, stageIndex: index, metrics: metrics, listener: listener,
            environment: StageEnvironment(stateDirectory: "/nonexistent", bpfPinDirectory: "/nonexistent"))
        return spec.stages[index].config.makeStage(context)
    }

    static let socks5 = stage(
        """
        pipelines:
          p:
            stages:
              - {type: listen.socks5, address: "127.0.0.1:1080", users: {alice: secret}, destinations: {deny: [10.0.0.0/8, .internal]}}
              - {type: connect.tcp}
        """, index: 0)
    static let httpConnect = stage(
        """
        pipelines:
          p:
            stages:
              - {type: listen.http, address: "127.0.0.1:3128", users: {alice: secret}}
              - {type: connect.tcp}
        """, index: 0)
    static let tlsSNI = stage(
        """
        pipelines:
          p:
            stages:
              - {type: listen.tls_sni, address: "127.0.0.1:443", routes: {"a.example": "127.0.0.1:1", "*.b.example": "127.0.0.1:2"}}
              - {type: connect.tcp}
        """, index: 0)
    static let webSocket = stage(
        """
        pipelines:
          p:
            stages:
              - {type: listen.tcp, address: "127.0.0.1:80"}
              - {type: transform.websocket, side: server, path: /tunnel, max_frame: 65536}
              - {type: connect.tcp, addresses: ["127.0.0.1:1"]}
        """, index: 1)
    static let aeadServer = stage(
        """
        pipelines:
          p:
            stages:
              - {type: listen.tcp, address: "127.0.0.1:8388"}
              - {type: transform.aead, side: server, password: fuzz, cipher: chacha20-ietf-poly1305}
              - {type: connect.tcp}
        """, index: 1)

    /// Feeds `bytes` to an accepted connection's opening as the forwarder sets it up: the stage's accept
    /// handlers, then its (or the listener's) negotiation. The input arrives in pieces cut where its first
    /// byte says, then the client half-closes; a negotiation that succeeds is answered and handed over.
    static func opening(_ bytes: [UInt8], _ stage: any Stage) {
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        let info = ConnectionInfo(pipeline: "fuzz", client: try? SocketAddress(ipAddress: "192.0.2.1", port: 4000), local: nil, eventLoop: channel.eventLoop)
        var negotiation: (any StreamNegotiation)?
        if let listener = stage as? any NegotiatingStreamListener {
            negotiation = listener.negotiation(for: info)
        } else if let filter = stage as? any StreamFilter {
            try? channel.pipeline.syncOperations.addHandlers(filter.acceptHandlers(for: info))
            negotiation = filter.negotiation(for: info)
        }
        let decided = negotiation?.begin(on: channel)
        // Connected, as an accepted socket is: the handlers start reading on channelActive.
        _ = try? channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let cut = bytes.isEmpty ? 0 : max(1, Int(bytes[0]) % 16)
        var rest = bytes[...]
        while !rest.isEmpty, channel.isActive {
            let piece = rest.prefix(cut)
            rest = rest.dropFirst(piece.count)
            try? channel.writeInbound(ByteBuffer(bytes: piece))
            _ = try? channel.readOutbound(as: ByteBuffer.self)
        }
        var succeeded = false
        decided?.whenSuccess { _ in succeeded = true }
        if succeeded, let negotiation {
            let target = EmbeddedChannel()
            negotiation.succeed(target: target)
            _ = try? target.finish(acceptAlreadyClosed: true)
        }
        channel.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        while (try? channel.readInbound(as: ByteBuffer.self)) != nil {}
        while (try? channel.readOutbound(as: ByteBuffer.self)) != nil {}
    }

    // MARK: - Datagrams and codecs

    static func socks5UDP(_ bytes: [UInt8]) {
        _ = SOCKS5UDPDatagram.parse(ByteBuffer(bytes: bytes))
        _ = SOCKSAddressForm.parse(ByteBuffer(bytes: bytes))
    }

    /// The opener, on what a client sends (first byte even), or on a stream the harness seals with the
    /// shared key (odd), so the address header and chunk parsing behind authentication are reached too.
    static func aead(_ bytes: [UInt8]) {
        guard let mode = bytes.first else { return }
        let body = Array(bytes.dropFirst())
        if mode % 2 == 0 {
            opening(body, aeadServer)
            return
        }
        let cipher = ShadowsocksCipher.chacha20IETFPoly1305
        var sealer = ShadowsocksSealer(cipher: cipher, master: cipher.masterKey(password: "fuzz"), salt: ShadowsocksSealer.randomSalt(cipher))
        var sealed = ByteBuffer()
        try? sealer.seal(ByteBuffer(bytes: body), into: &sealed)
        opening(Array(sealed.readableBytesView), aeadServer)
    }

    static func padding(_ bytes: [UInt8]) {
        var deframer = PaddingDeframer(maxPadding: 255)
        let cut = bytes.isEmpty ? 1 : max(1, Int(bytes[0]) % 32)
        var rest = bytes[...]
        while !rest.isEmpty {
            let piece = rest.prefix(cut)
            rest = rest.dropFirst(piece.count)
            guard (try? deframer.feed(ByteBuffer(bytes: piece))) != nil else { return }
        }
    }

    /// DNS responses as enforce.nftables' resolver reads them (the shared wire format).
    static func dns(_ bytes: [UInt8]) {
        _ = try? DNSWire.parseResponse(bytes)
    }

    static let filterRules = DomainRules(lists: [(name: "fuzz", text: Array("||ads.example^\n*.wild.example\n@@||ok.ads.example^\n".utf8), allowList: false)])

    /// dns.filter: queries and upstream answers as it reads them, and list text as it compiles it.
    static func dnsFilter(_ bytes: [UInt8]) {
        if let query = try? DNSWire.parseQuery(bytes) {
            _ = DNSWire.answer(to: query, code: DNSWire.ResponseCode.nameError, records: [(DNSWire.RecordType.a, 60, [0, 0, 0, 0])])
            _ = filterRules.decide(query.question.name)
        }
        if let response = try? DNSWire.parseResponse(bytes) {
            _ = DNSWire.served(bytes, id: 1, ttlOffsets: response.ttlOffsets, age: 30)
        }
        _ = DomainRules(lists: [(name: "fuzz", text: bytes, allowList: false)]).decide("a.b.example.com")
    }

    // MARK: - Coordinator

    static func coordinatorMessages(_ bytes: [UInt8]) {
        let text = String(decoding: bytes, as: UTF8.self)
        _ = try? WireCoding.decode(AgentMessage.self, from: text)
        if let message = try? WireCoding.decode(CoordinatorMessage.self, from: text), case .bundle(let bundle) = message {
            _ = bundle.isIntact
        }
    }

    /// JSON request bodies as the API decodes them, and what it does with them next: selectors, durations,
    /// list entries checked by the nftables stage's rules.
    static func coordinatorRequests(_ bytes: [UInt8]) {
        let data = Data(bytes)
        let decoder = JSONDecoder()
        if let request = try? decoder.decode(EnrollmentTokenRequest.self, from: data), let ttl = request.ttl {
            _ = try? DurationParser.parse(ttl)
        }
        _ = try? decoder.decode(APITokenRequest.self, from: data)
        if let request = try? decoder.decode(AssignmentRequest.self, from: data), let selector = request.selector {
            _ = try? LabelSelector(parsing: selector)
        }
        if let request = try? decoder.decode(RelayRequest.self, from: data), let selector = request.entry.selector {
            _ = try? LabelSelector(parsing: selector)
        }
        if let request = try? decoder.decode(ListRequest.self, from: data), !request.entries.isEmpty {
            let lists = NamedListFile.render([NamedList(name: "fuzz", entries: request.entries, updatedAt: 0)])
            let user = "pipelines:\n  p:\n    stages:\n      - {type: enforce.nftables, allow_destinations: {interfaces: [lo], lists: [fuzz]}}\n"
            _ = try? loader.loadPipelines(yaml: user, name: "fuzz.yaml", listFiles: [(name: "lists/fuzz.yaml", yaml: lists)])
        }
        _ = try? decoder.decode(ListChange.self, from: data)
    }
}
