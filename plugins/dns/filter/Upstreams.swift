import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import WeirCore

/// The resolvers a dns.filter asks, and how: `failover` (in order), `parallel` (all at once, the first good
/// answer), `fastest` (the lowest moving average of latency) or `round_robin`. A good answer is any but
/// SERVFAIL and REFUSED; when no upstream gives one the caller answers SERVFAIL — there is no other resolver
/// to fall back to, so nothing unfiltered leaks.
final class Upstreams: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// What one upstream said, with how long it took.
    struct Answer: Sendable {
        var bytes: [UInt8]
        var response: DNSWire.Response
        var upstream: DNSFilterConfig.Upstream
    }

    private let upstreams: [DNSFilterConfig.Upstream]
    private let strategy: DNSFilterConfig.Strategy
    private let timeout: TimeAmount
    private let group: any EventLoopGroup
    /// For tls:// upstreams: the system's trust roots, or `upstream_ca`.
    private let tls: NIOSSLContext?
    /// Latency moving averages (seconds) by upstream index, for `fastest`; the round-robin cursor.
    private let state = NIOLockedValueBox<(latency: [Double], next: Int)>(([], 0))
    let observe: @Sendable (_ upstream: DNSFilterConfig.Upstream, _ seconds: Double?, _ error: String?) -> Void

    init(
        _ upstreams: [DNSFilterConfig.Upstream], strategy: DNSFilterConfig.Strategy, timeout: Duration, group: any EventLoopGroup,
        caFile: String? = nil, observe: @escaping @Sendable (DNSFilterConfig.Upstream, Double?, String?) -> Void
    ) {
        if upstreams.contains(where: { $0.transport == .tls }) {
            var configuration = TLSConfiguration.makeClientConfiguration()
            if let caFile, let certificates = try? NIOSSLCertificate.fromPEMFile(caFile) { configuration.trustRoots = .certificates(certificates) }
            tls = try? NIOSSLContext(configuration: configuration)
        } else {
            tls = nil
        }
        self.upstreams = upstreams
        self.strategy = strategy
        self.timeout = TimeAmount(timeout)
        self.group = group
        self.observe = observe
        state.withLockedValue { $0.latency = Array(repeating: 0, count: upstreams.count) }
    }

    /// Asks upstreams for `query` (the client's bytes; the id is replaced) by the strategy.
    func resolve(_ query: [UInt8], question: DNSWire.Question) async throws -> Answer {
        switch strategy {
        case .parallel: return try await race(query, question: question)
        case .failover: return try await inOrder(Array(upstreams.indices), query, question: question)
        case .roundRobin:
            let start = state.withLockedValue { state in
                defer { state.next = (state.next + 1) % upstreams.count }
                return state.next
            }
            return try await inOrder(Array(start..<upstreams.count) + Array(0..<start), query, question: question)
        case .fastest:
            let order = state.withLockedValue { state in upstreams.indices.sorted { state.latency[$0] < state.latency[$1] } }
            return try await inOrder(order, query, question: question)
        }
    }

    private func inOrder(_ order: [Int], _ query: [UInt8], question: DNSWire.Question) async throws -> Answer {
        var errors: [String] = []
        for index in order {
            do {
                return try await ask(index, query, question: question)
            } catch {
                errors.append("\(upstreams[index]): \(error)")
            }
        }
        throw Failure(description: errors.joined(separator: "; "))
    }

    private func race(_ query: [UInt8], question: DNSWire.Question) async throws -> Answer {
        try await withThrowingTaskGroup(of: Answer?.self) { group in
            for index in upstreams.indices {
                group.addTask { try? await self.ask(index, query, question: question) }
            }
            while let result = try await group.next() {
                if let answer = result {
                    group.cancelAll()
                    return answer
                }
            }
            throw Failure(description: "no upstream answered")
        }
    }

    /// One upstream, one query: UDP (TCP again when the answer is truncated) or TCP.
    private func ask(_ index: Int, _ query: [UInt8], question: DNSWire.Question) async throws -> Answer {
        let upstream = upstreams[index]
        let started = ContinuousClock.now
        do {
            let id = UInt16.random(in: 0...UInt16.max)
            var bytes = query
            bytes[0] = UInt8(id >> 8)
            bytes[1] = UInt8(id & 0xFF)
            var answer = upstream.transport == .udp ? try await udp(upstream, bytes) : try await stream(upstream, bytes)
            var response = try DNSWire.parseResponse(answer)
            if upstream.transport == .udp, response.truncated {
                answer = try await stream(upstream, bytes)
                response = try DNSWire.parseResponse(answer)
            }
            // An answer to another question (or a spoofed one) is no answer.
            guard response.id == id, response.question == question else { throw Failure(description: "the answer does not match the query") }
            guard response.responseCode != DNSWire.ResponseCode.serverFailure, response.responseCode != DNSWire.ResponseCode.refused else {
                throw Failure(description: response.responseCode == DNSWire.ResponseCode.refused ? "REFUSED" : "SERVFAIL")
            }
            let elapsed = ContinuousClock.now - started
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            record(index, seconds: seconds)
            observe(upstream, seconds, nil)
            return Answer(bytes: answer, response: response, upstream: upstream)
        } catch {
            // A failure weighs like a slow answer, so `fastest` moves away from it.
            record(index, seconds: Double(timeout.nanoseconds) / 1e9 * 2)
            observe(upstream, nil, error is CancellationError ? nil : "\(error)")
            throw error
        }
    }

    private func record(_ index: Int, seconds: Double) {
        state.withLockedValue { state in
            state.latency[index] = state.latency[index] == 0 ? seconds : state.latency[index] * 0.8 + seconds * 0.2
        }
    }

    // MARK: - Transports

    private func udp(_ upstream: DNSFilterConfig.Upstream, _ query: [UInt8]) async throws -> [UInt8] {
        let address = try SocketAddress(ipAddress: upstream.host, port: upstream.port)
        let promise = group.next().makePromise(of: [UInt8].self)
        let channel = try await DatagramBootstrap(group: group)
            .channelInitializer { channel in channel.pipeline.addHandler(FirstDatagram(promise: promise, from: address)) }
            .bind(host: address.protocol == .inet6 ? "::" : "0.0.0.0", port: 0).get()
        defer { channel.close(promise: nil) }
        let timeout = channel.eventLoop.scheduleTask(in: self.timeout) { promise.fail(Failure(description: "timed out")) }
        defer { timeout.cancel() }
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: address, data: ByteBuffer(bytes: query))).get()
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            promise.fail(CancellationError())
        }
    }

    /// TCP, or TLS over it (DNS over TLS, RFC 7858: the same length-framed messages).
    private func stream(_ upstream: DNSFilterConfig.Upstream, _ query: [UInt8]) async throws -> [UInt8] {
        let promise = group.next().makePromise(of: [UInt8].self)
        let tls = upstream.transport == .tls ? self.tls : nil
        if upstream.transport == .tls, tls == nil { throw Failure(description: "no TLS context (upstream_ca unreadable?)") }
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: upstream.serverName)) }
                    try channel.pipeline.syncOperations.addHandlers([
                        ByteToMessageHandler(LengthFieldBasedFrameDecoder(lengthFieldBitLength: .twoBytes)),
                        LengthFieldPrepender(lengthFieldBitLength: .twoBytes), FirstFrame(promise: promise),
                    ])
                }
            }
            .connect(host: upstream.host, port: upstream.port).get()
        defer { channel.close(promise: nil) }
        let timeout = channel.eventLoop.scheduleTask(in: self.timeout) { promise.fail(Failure(description: "timed out")) }
        defer { timeout.cancel() }
        try await channel.writeAndFlush(ByteBuffer(bytes: query)).get()
        return try await withTaskCancellationHandler {
            try await promise.futureResult.get()
        } onCancel: {
            promise.fail(CancellationError())
        }
    }
}

/// Completes with the first datagram from the upstream's address (others are ignored: spoofing from elsewhere).
private final class FirstDatagram: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    private let promise: EventLoopPromise<[UInt8]>
    private let from: SocketAddress

    init(promise: EventLoopPromise<[UInt8]>, from: SocketAddress) {
        self.promise = promise
        self.from = from
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.remoteAddress == from else { return }
        promise.succeed(Array(buffer: envelope.data))
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { promise.fail(error) }
}

/// Completes with the first length-framed message; a connection that closes first fails.
private final class FirstFrame: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let promise: EventLoopPromise<[UInt8]>

    init(promise: EventLoopPromise<[UInt8]>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) { promise.succeed(Array(buffer: unwrapInboundIn(data))) }
    func channelInactive(context: ChannelHandlerContext) { promise.fail(Upstreams.Failure(description: "the connection closed")) }
    func errorCaught(context: ChannelHandlerContext, error: any Error) { promise.fail(error) }
}
