import NIOCore
import NIOHPACK
import NIOHTTP2
import WeirCore

/// One multiplexed connection as an HTTP/2 stream: turns the stream's frames into the plain byte stream the
/// rest of the pipeline expects, and back.
///
/// The client opens the stream with a CONNECT request naming the connection's destination (`:authority`,
/// `0.0.0.0:0` when the client named none); the server answers 200 at once and hands the stream on. END_STREAM
/// is half-close both ways. Nothing is delivered before the pipeline asks for a read, so handlers added after
/// the hand-over see the stream from its first byte.
final class MuxStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame.FramePayload
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame.FramePayload

    enum Opening {
        /// Client side: request a stream to this destination.
        case request(Destination?)
        /// Server side: waiting for the request; then the stream goes to the closure.
        case accepted(@Sendable (any Channel, Destination?) -> Void)
    }

    /// What the peer sent that the pipeline has not asked for yet.
    private enum Held {
        case data(ByteBuffer)
        case end
    }

    /// What is still to do to open the stream; nil once it is open.
    private var opening: Opening?
    private var held: [Held] = []
    /// The pipeline asked to read while nothing was held: what arrives is delivered at the end of this cycle.
    private var deliverOnReadComplete = false
    private var outputEnded = false
    /// The last data write; an empty write (a glue's "tell me when all is out") completes with it.
    private var lastWrite: EventLoopFuture<Void>?

    init(opening: Opening) { self.opening = opening }

    /// Server side: the request has not arrived yet, so reads are the handler's own.
    private var awaitingRequest: Bool {
        if case .accepted = opening { true } else { false }
    }

    static let noDestination = "0.0.0.0:0"

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        switch opening {
        case .request(let destination):
            opening = nil
            let headers: HPACKHeaders = [":method": "CONNECT", ":authority": destination?.description ?? Self.noDestination]
            context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: headers))), promise: nil)
        case .accepted:
            context.read()
        case nil:
            break
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .headers(let headers):
            if awaitingRequest { accept(context, request: headers.headers) }
            if headers.endStream { held.append(.end) }
        case .data(let data):
            if case .byteBuffer(let buffer) = data.data, buffer.readableBytes > 0 { held.append(.data(buffer)) }
            if data.endStream { held.append(.end) }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if awaitingRequest {
            context.read()
            return
        }
        // A read the pipeline asked for is answered at the end of the cycle, with everything that arrived;
        // when only frames without data came, the read stays asked for.
        guard deliverOnReadComplete else { return }
        if held.isEmpty {
            context.read()
        } else {
            deliverOnReadComplete = false
            deliver(context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        // The stream can end (both sides sent END_STREAM) with data the pipeline has not asked for yet.
        deliver(context)
        context.fireChannelInactive()
    }

    func read(context: ChannelHandlerContext) {
        guard !awaitingRequest else { return }
        if held.isEmpty {
            deliverOnReadComplete = true
            context.read()
        } else {
            deliver(context)
        }
    }

    private func deliver(_ context: ChannelHandlerContext) {
        guard !held.isEmpty else { return }
        let delivering = held
        held.removeAll()
        var ended = false
        for item in delivering {
            switch item {
            case .data(let buffer): context.fireChannelRead(wrapInboundOut(buffer))
            case .end: ended = true
            }
        }
        context.fireChannelReadComplete()
        if ended { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
    }

    private func accept(_ context: ChannelHandlerContext, request: HPACKHeaders) {
        guard case .accepted(let handOver) = opening else { return }
        opening = nil
        guard request.first(name: ":method") == "CONNECT", let authority = request.first(name: ":authority") else {
            context.close(promise: nil)
            return
        }
        let destination = authority == Self.noDestination ? nil : try? HostPort.parse(authority)
        context.writeAndFlush(wrapOutboundOut(.headers(.init(headers: [":status": "200"]))), promise: nil)
        handOver(context.channel, destination)
    }

    /// Errors here come from the stream itself (a reset, a write after it closed), not from a transform
    /// behind: the stream ends like a reset connection, without counting as a failure of those transforms.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// The forwarder switched autoRead on: a stream channel does not start reading by itself.
    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard event is StartReading else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        promise?.succeed()
        read(context: context)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let buffer = unwrapOutboundIn(data)
        guard buffer.readableBytes > 0 else {
            // Empty DATA frames are something peers limit; the write stands for "after what came before".
            if let lastWrite, let promise { lastWrite.cascade(to: promise) } else { promise?.succeed() }
            return
        }
        let written = promise ?? context.eventLoop.makePromise()
        lastWrite = written.futureResult
        context.write(wrapOutboundOut(.data(.init(data: .byteBuffer(buffer)))), promise: written)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .output else {
            context.close(mode: mode, promise: promise)
            return
        }
        // Half-close is the END_STREAM flag on an empty DATA frame.
        guard !outputEnded else {
            promise?.succeed()
            return
        }
        outputEnded = true
        context.writeAndFlush(wrapOutboundOut(.data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))), promise: promise)
    }
}
