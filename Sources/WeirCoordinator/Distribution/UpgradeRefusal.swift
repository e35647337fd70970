import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// Answers a refused agent WebSocket upgrade with its own status and reason (401 "credential revoked", 409 …).
///
/// Hummingbird answers every upgrade that `shouldUpgrade` declines with an empty `400` and closes the
/// connection, so an agent could not tell a revoked credential from a malformed request. This writes the
/// real response first, then puts a handler just above TLS that discards whatever is written after it (that
/// `400`); Hummingbird's close still ends the connection. `Connection: close` tells the client nothing follows.
enum UpgradeRefusal {
    static func send(_ refusal: AgentRefusal, on channel: any Channel) async {
        let body = (try? JSONEncoder().encode(["error": refusal.message])) ?? Data("{}".utf8)
        let status = HTTPResponseStatus(statusCode: Int(refusal.status.code), reasonPhrase: refusal.status.reasonPhrase)
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: [
            "Content-Type": "application/json", "Content-Length": "\(body.count)", "Connection": "close",
        ])
        let written = channel.eventLoop.submit {
            let pipeline = channel.pipeline.syncOperations
            channel.write(HTTPServerResponsePart.head(head), promise: nil)
            channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
            channel.writeAndFlush(HTTPServerResponsePart.end(nil), promise: nil)
            let tls = try pipeline.handler(type: NIOSSLServerHandler.self)
            try pipeline.addHandler(DiscardWrites(), position: .after(tls))
        }
        _ = try? await written.get()
    }
}

/// Drops every write (completing it) so nothing more reaches the peer; closes and flushes pass.
private final class DiscardWrites: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = IOData

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        promise?.succeed(())
    }
}
