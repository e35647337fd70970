import NIOCore
import NIOWebSocket

/// Fired up the pipeline by a handshake handler once the opening handshake has completed.
struct WebSocketUpgraded: Sendable {}

/// The server's side of the opening handshake, nearest the socket: reads the request head, answers 101 (or
/// refuses and closes), then passes the frames that follow up to the frame decoder and leaves the pipeline.
final class WebSocketServerHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let path: String
    private var reader = HTTPHeadReader()
    private var done = false

    init(path: String) { self.path = path }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch reader.feed(unwrapInboundIn(data)) {
        case .needMore:
            return
        case .invalid(let why):
            refuse(context, WebSocketFailure(reason: why), response: "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        case .head(let head, let leftover):
            switch WebSocketHandshake.answer(head, path: path) {
            case .refuse(let status, let response):
                refuse(context, WebSocketFailure(reason: "refused with \(status): \(head.startLine)"), response: response)
            case .upgrade(let response):
                done = true
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response)), promise: nil)
                context.openingCompleted(stage: TransformWebSocketConfig.type)
                upgraded(context, leftover: leftover)
            }
        }
    }

    /// Answers, then reports and closes once the answer is out (reported earlier, the error would close the
    /// channel before the answer left).
    private func refuse(_ context: ChannelHandlerContext, _ error: WebSocketFailure, response: String) {
        done = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: response))).whenComplete { _ in
            channel.pipeline.fireErrorCaught(error)
            channel.close(promise: nil)
        }
    }
}

/// The client's side of the opening handshake, nearest the socket: sends the request as soon as the channel
/// is active, checks the 101 response, then passes what follows up and leaves the pipeline.
final class WebSocketClientHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let request: String
    private let key: String
    private var reader = HTTPHeadReader()
    private var sent = false
    private var done = false

    init(path: String, host: String, headers: [(String, String)]) {
        key = WebSocketHandshake.randomKey()
        request = WebSocketHandshake.clientRequest(path: path, host: host, key: key, headers: headers)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { send(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        send(context)
        context.fireChannelActive()
    }

    private func send(_ context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: request)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch reader.feed(unwrapInboundIn(data)) {
        case .needMore:
            return
        case .invalid(let why):
            fail(context, why)
        case .head(let head, let leftover):
            if let problem = WebSocketHandshake.problem(with: head, key: key) {
                fail(context, problem)
            } else {
                done = true
                upgraded(context, leftover: leftover)
            }
        }
    }

    private func fail(_ context: ChannelHandlerContext, _ why: String) {
        done = true
        context.fireErrorCaught(WebSocketFailure(reason: why))
        context.close(promise: nil)
    }
}

struct WebSocketFailure: Error, CustomStringConvertible {
    let reason: String
    var description: String { "websocket: \(reason)" }
}

extension ChannelInboundHandler where Self: RemovableChannelHandler, InboundOut == ByteBuffer {
    /// Tells the stream handler to start, hands on the bytes that followed the head, and leaves.
    fileprivate func upgraded(_ context: ChannelHandlerContext, leftover: ByteBuffer) {
        context.fireUserInboundEventTriggered(WebSocketUpgraded())
        if leftover.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(leftover))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

/// Carries the byte stream in binary frames: what is written becomes one frame (masked on the client side, as
/// RFC 6455 requires), data frames read become bytes. Holds writes until the handshake completes. A Close frame
/// from the peer is a half-close; half-closing this side sends a Close frame. Pings are answered.
final class WebSocketStreamHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let masks: Bool
    private var open = false
    private var held: [(ByteBuffer, EventLoopPromise<Void>?)] = []
    private var heldClose: EventLoopPromise<Void>?? = nil
    /// Completes when this side's Close frame has been written, after all data before it.
    private var sentClose: EventLoopFuture<Void>?
    private var receivedClose = false

    init(masks: Bool) { self.masks = masks }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is WebSocketUpgraded else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        open = true
        let held = self.held
        self.held = []
        for (data, promise) in held { context.write(wrapOutboundOut(frame(.binary, data, context)), promise: promise) }
        if !held.isEmpty { context.flush() }
        if let promise = heldClose {
            heldClose = nil
            closeOutput(context, promise: promise)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let received = unwrapInboundIn(data)
        switch received.opcode {
        case .binary, .text, .continuation:
            let payload = WebSocketFraming.payload(of: received)
            if payload.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(payload)) }
        case .ping:
            guard sentClose == nil else { return }
            context.writeAndFlush(wrapOutboundOut(frame(.pong, WebSocketFraming.payload(of: received), context)), promise: nil)
        case .pong:
            break
        case .connectionClose:
            guard !receivedClose else { return }
            receivedClose = true
            if let sentClose {
                closeAfter(sentClose, context)
            } else {
                context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
            }
        default:
            context.fireErrorCaught(WebSocketFailure(reason: "unknown opcode \(received.opcode)"))
            context.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let bytes = unwrapOutboundIn(data)
        guard open else {
            held.append((bytes, promise))
            return
        }
        context.write(wrapOutboundOut(frame(.binary, bytes, context)), promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else {
            context.close(mode: mode, promise: promise)
            return
        }
        guard open else {
            heldClose = .some(promise)
            return
        }
        closeOutput(context, promise: promise)
    }

    /// Sends Close (normal closure): the WebSocket form of a half-close. TCP stays open for the peer's answer, as
    /// RFC 6455 asks (a proxy in between may not pass a TCP half-close on); once both sides have sent Close, the
    /// connection goes.
    private func closeOutput(_ context: ChannelHandlerContext, promise: EventLoopPromise<Void>?) {
        guard sentClose == nil else {
            promise?.succeed()
            return
        }
        var code = context.channel.allocator.buffer(capacity: 2)
        code.write(webSocketErrorCode: .normalClosure)
        let written = context.writeAndFlush(wrapOutboundOut(frame(.connectionClose, code, context)))
        written.cascade(to: promise)
        sentClose = written
        if receivedClose { closeAfter(written, context) }
    }

    /// Closes once `written` is out: closing at once would drop data still queued for the socket.
    private func closeAfter(_ written: EventLoopFuture<Void>, _ context: ChannelHandlerContext) {
        let channel = context.channel
        written.whenComplete { _ in channel.close(promise: nil) }
    }

    private func frame(_ opcode: WebSocketOpcode, _ data: ByteBuffer, _ context: ChannelHandlerContext) -> ByteBuffer {
        var output = context.channel.allocator.buffer(capacity: data.readableBytes + 14)
        WebSocketFraming.encode(opcode, payload: data, maskKey: masks ? .random() : nil, into: &output)
        return output
    }
}
