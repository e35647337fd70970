import NIOCore
import NIOPosix
import WeirCore

/// A SOCKS5 UDP datagram (RFC 1928 section 7): `RSV` (2 bytes, zero), `FRAG`, the destination in SOCKS
/// address form, then the data.
enum SOCKS5UDPDatagram {
    enum Parsed: Equatable {
        case datagram(Destination, payload: ByteBuffer)
        /// Fragments (FRAG != 0) are not supported; RFC 1928 lets a server drop them.
        case fragment
        case malformed
    }

    static func parse(_ bytes: ByteBuffer) -> Parsed {
        var bytes = bytes
        guard let reserved = bytes.readInteger(as: UInt16.self), reserved == 0, let fragment = bytes.readInteger(as: UInt8.self) else {
            return .malformed
        }
        guard fragment == 0 else { return .fragment }
        guard case .destination(let destination, let length) = SOCKSAddressForm.parse(bytes) else { return .malformed }
        bytes.moveReaderIndex(forwardBy: length)
        return .datagram(destination, payload: bytes)
    }

    static func encode(from source: SocketAddress, payload: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
        var output = allocator.buffer(capacity: payload.readableBytes + 22)
        output.writeInteger(UInt16(0))
        output.writeInteger(UInt8(0))
        var address = SOCKSAddressForm.encode(Destination(host: source.ipAddress ?? "0.0.0.0", port: source.port ?? 0))
        output.writeBuffer(&address)
        output.writeImmutableBuffer(payload)
        return output
    }
}

/// The UDP side of one association: datagrams from the client (its address, the port it first sends from)
/// go to their destination without the header; datagrams from destinations the client sent to come back to
/// it with one. Everything else is dropped, so the port is no open relay.
final class SOCKS5UDPRelayHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private let clientHost: String
    private let policy: DestinationPolicy
    private let metrics: PipelineMetrics
    private var client: SocketAddress?
    private var contacted: Set<SocketAddress> = []

    init(clientHost: String, policy: DestinationPolicy, metrics: PipelineMetrics) {
        self.clientHost = clientHost
        self.policy = policy
        self.metrics = metrics
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let source = envelope.remoteAddress
        if source.ipAddress == clientHost, client == nil || client == source {
            client = source
            forward(context, envelope.data)
        } else if let client, contacted.contains(source) {
            metrics.bytesOut.increment(by: Int64(envelope.data.readableBytes))
            let wrapped = SOCKS5UDPDatagram.encode(from: source, payload: envelope.data, allocator: context.channel.allocator)
            context.writeAndFlush(wrapOutboundOut(AddressedEnvelope(remoteAddress: client, data: wrapped)), promise: nil)
        }
    }

    private func forward(_ context: ChannelHandlerContext, _ bytes: ByteBuffer) {
        guard case .datagram(let destination, let payload) = SOCKS5UDPDatagram.parse(bytes), policy.permits(destination) else { return }
        let channel = context.channel
        Resolver.resolveAll(host: destination.host, port: destination.port, datagram: true, on: channel.eventLoop)
            .assumeIsolated().whenSuccess { addresses in
                // The socket is bound to the listener's family; the first address of that family is used. A
                // name is checked again once resolved, so denied networks stay denied behind a name.
                guard let family = channel.localAddress?.protocol, let target = addresses.first(where: { $0.protocol == family }),
                    let address = target.ipAddress, self.policy.permitsResolved(address)
                else { return }
                self.contacted.insert(target)
                self.metrics.bytesIn.increment(by: Int64(payload.readableBytes))
                channel.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: payload), promise: nil)
            }
    }
}
