import Crypto
import NIOCore
import WeirCore

/// Encrypts what is written and decrypts what is read on one channel: the accepted channel for
/// `side: server`, the target channel for `side: client`. On the client side the destination's address
/// header is the first plaintext sent, as a Shadowsocks server expects.
final class ShadowsocksAEADHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var sealer: ShadowsocksSealer
    private var opener: ShadowsocksOpener
    private var header: ByteBuffer?
    private var failed = false

    init(cipher: ShadowsocksCipher, master: SymmetricKey, header: ByteBuffer?) {
        sealer = ShadowsocksSealer(cipher: cipher, master: master, salt: ShadowsocksSealer.randomSalt(cipher))
        opener = ShadowsocksOpener(cipher: cipher, master: master)
        self.header = header
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { sendHeader(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        sendHeader(context)
        context.fireChannelActive()
    }

    private func sendHeader(_ context: ChannelHandlerContext) {
        guard let header else { return }
        self.header = nil
        write(context: context, data: NIOAny(header), promise: nil)
        context.flush()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        do {
            let plaintext = try opener.open(unwrapInboundIn(data))
            if plaintext.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(plaintext)) }
        } catch {
            // The stream cannot be trusted from here on; like shadowsocks-libev, close without a word.
            failed = true
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var output = context.channel.allocator.buffer(capacity: unwrapOutboundIn(data).readableBytes + 64)
        do {
            try sealer.seal(unwrapOutboundIn(data), into: &output)
            context.write(wrapOutboundOut(output), promise: promise)
        } catch {
            promise?.fail(error)
            context.close(promise: nil)
        }
    }
}

/// `side: server` behind a listener whose clients name no destination: the first plaintext of the stream
/// carries it. Waits for the whole address, then hands what followed it to the glue.
final class AddressHeaderNegotiation: ReadsUntilDecided, RemovableChannelHandler, StreamNegotiation, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var buffered = ByteBuffer()
    private var destination: EventLoopPromise<Destination>?
    private var context: ChannelHandlerContext?
    private(set) var decided = false
    private var failed = false

    func begin(on channel: any Channel) -> EventLoopFuture<Destination> {
        let promise = channel.eventLoop.makePromise(of: Destination.self)
        destination = promise
        return install([self], on: channel, for: promise)
    }

    func succeed(target: any Channel) {
        guard let context else { return }
        if buffered.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(buffered))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func fail(_ reason: NegotiationFailure) { context?.close(promise: nil) }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        readIfActive(context)
    }

    /// The context refers back to this handler: kept past removal, the two would keep each other (and the
    /// connection's buffers) alive after the connection closed.
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var bytes = unwrapInboundIn(data)
        buffered.writeBuffer(&bytes)
        // Decided, waiting for the target: one read of the socket can yield several decrypted chunks (a TLS
        // record of several WebSocket frames); they wait here for the glue with the rest.
        guard !decided else { return }
        switch SOCKSAddressForm.parse(buffered) {
        case .incomplete:
            return
        case .malformed(let reason):
            settle(AddressHeaderRefused(reason: reason))
            context.close(promise: nil)
        case .destination(let wanted, let length):
            buffered.moveReaderIndex(forwardBy: length)
            decided = true
            destination?.succeed(wanted)
            destination = nil
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        settle(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        settle(AddressHeaderRefused(reason: "the client went away"))
        context.fireChannelInactive()
    }

    private func settle(_ error: any Error) {
        decided = true
        failed = true
        destination?.fail(error)
        destination = nil
    }
}

struct AddressHeaderRefused: Error, CustomStringConvertible {
    let reason: String
    var description: String { "stream address header: \(reason)" }
}
