import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import WeirCore

/// The running `dns.filter`: UDP and TCP sockets on `listen` (one UDP socket and answering thread per core,
/// SO_REUSEPORT — `UDPAnswerLoop`; TCP on NIO), each query answered by `DNSFilterEngine`; a reload's successor takes the sockets over (`DNSSockets`). Bounded: queries in flight
/// (`max_inflight`, more are REFUSED), TCP connections (1,024; more are closed at once), and a TCP
/// connection's idle time (10 s) and queries at once (16).
final class DNSFilter: ServiceStage, Sendable {
    private let config: DNSFilterConfig
    private let engine: DNSFilterEngine
    private let logger: Logger
    private let pipeline: String
    private let environment: StageEnvironment
    static let maxConnections = 1024
    static let udpSockets = max(1, min(System.coreCount, 16))
    static let queriesPerRead = 32
    /// Bytes of the largest UDP query read whole (EDNS padding and cookies included); a larger datagram is read cut
    /// short at this size and answered as what its first bytes say (garbage: FORMERR).
    static let largestQuery = 4096

    init(config: DNSFilterConfig, context: StageContext) {
        self.config = config
        var logger = Logger(label: "weir.dns")
        logger[metadataKey: "pipeline"] = "\(context.pipeline)"
        self.logger = logger
        pipeline = context.pipeline
        environment = context.environment
        engine = DNSFilterEngine(config: config, pipeline: context.pipeline, metrics: context.metrics, group: MultiThreadedEventLoopGroup.singleton)
    }

    func start() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let engine = engine
        engine.resolveGroups(peerAddresses: PeerAddressBook.addresses(stateDirectory: environment.stateDirectory, pipeline: pipeline))
        let address = try config.listen.socketAddress()
        // Before the sockets: the predecessor's events are carried over while it still answers, so the view
        // has no gap but the few answers the predecessor gives between the two steps.
        if let ring = engine.queryRing { DNSQueryLogs.shared.install(ring, for: pipeline) } else { DNSQueryLogs.shared.remove(nil, for: pipeline) }
        if DNSSockets.shared.takeOver(config.listen.description, owner: ObjectIdentifier(self), engine: engine) {
            logger.info("DNS server answering with the new configuration on the same sockets", metadata: ["address": "\(config.listen)"])
            engine.publishRules()
            return
        }
        let slot = EngineSlot(engine)
        // One UDP socket per core (SO_REUSEPORT: the kernel spreads clients over them), each answered by a
        // thread of its own (UDPAnswerLoop), so answering uses every core, as unbound's threads do.
        let sockets: [Int32]
        do {
            sockets = try DatagramSocket.bind(address, count: Self.udpSockets)
        } catch let error as IOError {
            // With the address: what an operator needs to find who holds the port.
            throw BindFailure(description: "bind \(address): \(String(cString: strerror(error.errnoCode)))")
        }
        let udp = sockets.map { UDPAnswerLoop(descriptor: $0, slot: slot) }
        // Port 0: the TCP socket joins the port the kernel gave the UDP ones.
        let bound = address.port == 0 ? (DatagramSocket.localAddress(sockets[0]) ?? address) : address
        let connections = NIOLockedValueBox(0)
        do {
            let tcp = try await ServerBootstrap(group: group)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
                .childChannelInitializer { channel in
                    let admitted = connections.withLockedValue { count -> Bool in
                        guard count < Self.maxConnections else { return false }
                        count += 1
                        return true
                    }
                    guard admitted else { return channel.close() }
                    channel.closeFuture.whenComplete { _ in connections.withLockedValue { $0 -= 1 } }
                    return channel.pipeline.addHandlers([
                        IdleStateHandler(readTimeout: .seconds(10)),
                        ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)),
                        LengthFieldPrepender(lengthFieldBitLength: .twoBytes), TCPQueries(slot: slot),
                    ])
                }
                .bind(to: bound).get()
            DNSSockets.shared.register(config.listen.description, channels: [tcp], loops: udp, slot: slot, owner: ObjectIdentifier(self))
        } catch {
            for loop in udp { await loop.close() }
            throw error
        }
        for loop in udp { loop.start() }
        logger.info("DNS server listening", metadata: ["address": "\(config.listen)", "rules": "\(config.rules.rules.count)"])
        engine.publishRules()
    }

    func stop() async { DNSSockets.shared.release(config.listen.description, owner: ObjectIdentifier(self)) }

    func retire() async {
        await stop()
        DNSQueryLogs.shared.remove(engine.queryRing, for: pipeline)
        await DNSSockets.shared.closeIfUnowned(config.listen.description)
    }

    deinit { engine.closeLog() }
}

/// Answers length-framed queries on a TCP connection, at most 16 at once; closes it when idle.
private final class TCPQueries: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let slot: EngineSlot
    private var pending = 0  // on the channel's event loop

    init(slot: EngineSlot) { self.slot = slot }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard pending < 16, let client = context.channel.remoteAddress.flatMap(DNSClient.init) else {
            context.close(promise: nil)
            return
        }
        let bytes = Array(buffer: unwrapInboundIn(data))
        let engine = slot.current
        var answered = engine.batch()
        defer { engine.record(&answered) }
        switch engine.answerImmediately(bytes, client: client, udp: false, batch: &answered) {
        case .answered(let reply):
            if let reply { context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: reply)), promise: nil) } else { context.close(promise: nil) }
        case .cached(let hit):
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: hit.bytes)), promise: nil)
        case .deferred(let query):
            pending += 1
            let channel = context.channel
            let loop = context.eventLoop
            Task {
                let reply = await engine.answer(query)
                loop.execute {
                    self.pending -= 1
                    channel.writeAndFlush(ByteBuffer(bytes: reply), promise: nil)
                }
            }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent { context.close(promise: nil) } else { context.fireUserInboundEventTriggered(event) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}

/// The DNS server's UDP sockets could not be bound, e.g. `bind 0.0.0.0:53: Address already in use`.
struct BindFailure: Error, CustomStringConvertible {
    let description: String
}
