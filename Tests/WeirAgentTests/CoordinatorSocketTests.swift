import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Testing
@testable import WeirAgent

/// The agent's coordinator WebSocket against servers that misbehave: one that accepts and says nothing, one that
/// upgrades and then never answers a ping, one that refuses with a status and reason. Loopback only.
@Suite struct CoordinatorSocketTests {
    /// A loopback server whose connections get `configure`; returns its port.
    static func server(_ configure: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>) async throws -> (any Channel, Int) {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer(configure)
            .bind(host: "127.0.0.1", port: 0).get()
        return (channel, channel.localAddress?.port ?? 0)
    }

    static func connect(port: Int, handshakeTimeout: TimeAmount = .seconds(5), pingEvery: Duration = .seconds(20)) async throws -> Bool {
        try await CoordinatorSocket.connect(
            url: "ws://127.0.0.1:\(port)/api/v1/agent/connect", headers: [], tls: .makeClientConfiguration(), maxMessageSize: 1 << 20,
            pingEvery: pingEvery, handshakeTimeout: handshakeTimeout
        ) { messages, _ in
            while try await messages.next() != nil {}
            return true
        }
    }

    @Test("a server that accepts and never answers the upgrade is given up after the handshake timeout")
    func stalledHandshake() async throws {
        let (server, port) = try await Self.server { $0.eventLoop.makeSucceededVoidFuture() }
        defer { server.close(promise: nil) }
        let started = ContinuousClock.now
        await #expect(throws: (any Error).self) { _ = try await Self.connect(port: port, handshakeTimeout: .milliseconds(300)) }
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test("a coordinator that upgrades and then never answers a ping is closed after two ping periods")
    func silentAfterUpgrade() async throws {
        let (server, port) = try await Self.server { channel in
            // Upgrades and then drops every frame: no pong, no close.
            let upgrader = NIOWebSocketServerUpgrader(
                shouldUpgrade: { channel, _ in channel.eventLoop.makeSucceededFuture(HTTPHeaders()) },
                upgradePipelineHandler: { channel, _ in channel.pipeline.addHandler(DropFrames()) })
            return channel.pipeline.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        }
        defer { server.close(promise: nil) }
        await #expect(throws: CoordinatorSocket.Failure.silent(seconds: 0)) {
            _ = try await Self.connect(port: port, pingEvery: .milliseconds(200))
        }
    }

    @Test("a refused upgrade gives its status and the JSON reason")
    func refusalReason() async throws {
        let (server, port) = try await Self.server { channel in
            channel.pipeline.configureHTTPServerPipeline().flatMap { channel.pipeline.addHandler(Refuse()) }
        }
        defer { server.close(promise: nil) }
        await #expect(throws: CoordinatorSocket.Failure.refused(status: 401, reason: "agent \"a\" was revoked")) {
            _ = try await Self.connect(port: port)
        }
    }
}

private final class DropFrames: ChannelInboundHandler, Sendable {
    typealias InboundIn = WebSocketFrame
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}

private final class Refuse: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .end = unwrapInboundIn(data) else { return }
        let body = #"{"error":"agent \"a\" was revoked"}"#
        context.write(wrapOutboundOut(.head(HTTPResponseHead(
            version: .http1_1, status: .unauthorized, headers: ["Content-Length": "\(body.utf8.count)", "Connection": "close"]))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }
}
