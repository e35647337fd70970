import Foundation
import NIOCore
import NIOPosix
import WeirCore

/// Asks DNS servers for the A and AAAA records of a name over UDP, one server after the other until one
/// answers. TTLs are what the allowlist needs and `getaddrinfo` does not give.
struct DNSResolver: Sendable {
    let servers: [SocketAddress]
    let timeout: TimeAmount
    let group: any EventLoopGroup

    enum Outcome: Equatable {
        /// Addresses (possibly none) and the smallest TTL among them.
        case addresses([IPNetwork], ttl: UInt32)
        case nameError
        case failure(String)
    }

    /// The servers of /etc/resolv.conf, port 53.
    static func systemServers() -> [SocketAddress] {
        guard let text = try? String(contentsOfFile: "/etc/resolv.conf", encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap { line in
            let fields = line.split(whereSeparator: \.isWhitespace)
            guard fields.count >= 2, fields[0] == "nameserver" else { return nil }
            return try? SocketAddress(ipAddress: String(fields[1]), port: 53)
        }
    }

    func resolve(_ name: String) async -> Outcome {
        var lastError = "no DNS server configured"
        for server in servers {
            do {
                async let v4 = ask(server, name, DNSWire.RecordType.a)
                async let v6 = ask(server, name, DNSWire.RecordType.aaaa)
                let (a, aaaa) = try await (v4, v6)
                let nameError = DNSWire.ResponseCode.nameError
                if a.responseCode == nameError, aaaa.responseCode == nameError { return .nameError }
                guard a.responseCode == DNSWire.ResponseCode.noError || aaaa.responseCode == DNSWire.ResponseCode.noError else {
                    lastError = "server \(server) answered response code \(a.responseCode)"
                    continue
                }
                // Each answer's addresses of the asked family (the answer section carries a CNAME chain's final records).
                let answers = a.addresses.filter { $0.bytes.count == 4 } + aaaa.addresses.filter { $0.bytes.count == 16 }
                let addresses = answers.map { IPNetwork(bytes: $0.bytes, prefix: $0.bytes.count * 8) }
                return .addresses(addresses, ttl: answers.map(\.ttl).min() ?? 0)
            } catch {
                lastError = "server \(server): \(error)"
            }
        }
        return .failure(lastError)
    }

    private func ask(_ server: SocketAddress, _ name: String, _ type: UInt16) async throws -> DNSWire.Response {
        let id = UInt16.random(in: 0...UInt16.max)
        let query = DNSWire.query(id: id, name: name, type: type)
        let loop = group.next()
        let promise = loop.makePromise(of: DNSWire.Response.self)
        let bindHost = server.protocol == .inet6 ? "::" : "0.0.0.0"
        let channel = try await DatagramBootstrap(group: loop)
            .channelInitializer { channel in
                channel.pipeline.addHandler(DNSResponseHandler(id: id, server: server, promise: promise))
            }
            .bind(host: bindHost, port: 0).get()
        defer { channel.close(promise: nil) }
        // Closing the channel fails the promise unless an answer came first.
        let timeout = loop.scheduleTask(in: self.timeout) { channel.close(promise: nil) }
        defer { timeout.cancel() }
        var buffer = channel.allocator.buffer(capacity: query.count)
        buffer.writeBytes(query)
        try await channel.writeAndFlush(AddressedEnvelope(remoteAddress: server, data: buffer))
        return try await promise.futureResult.get()
    }
}

struct DNSTimeout: Error, CustomStringConvertible {
    var description: String { "timed out" }
}

/// Completes the promise with the first response that matches the query's id and server.
private final class DNSResponseHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    let id: UInt16
    let server: SocketAddress
    let promise: EventLoopPromise<DNSWire.Response>
    private var done = false

    init(id: UInt16, server: SocketAddress, promise: EventLoopPromise<DNSWire.Response>) {
        self.id = id
        self.server = server
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard envelope.remoteAddress == server, let bytes = envelope.data.getBytes(at: envelope.data.readerIndex, length: envelope.data.readableBytes),
            let response = try? DNSWire.parseResponse(bytes), response.id == id, !done
        else { return }
        done = true
        promise.succeed(response)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done {
            done = true
            promise.fail(DNSTimeout())
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP unreachable and the like: the server is not there.
        if !done {
            done = true
            promise.fail(error)
        }
        context.close(promise: nil)
    }
}
