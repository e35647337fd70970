import NIOCore

/// A destination in SOCKS5 address form (RFC 1928): `ATYP` 1 (IPv4, 4 bytes), 3 (name: length byte and name)
/// or 4 (IPv6, 16 bytes), then the port in 2 bytes, big-endian. SOCKS5 UDP datagrams and the start of a
/// Shadowsocks stream carry it.
public enum SOCKSAddressForm {
    public enum Parsed: Equatable {
        case incomplete
        case destination(Destination, length: Int)
        case malformed(String)
    }

    public static func parse(_ buffer: ByteBuffer) -> Parsed {
        var buffer = buffer
        let start = buffer.readerIndex
        guard let type = buffer.readInteger(as: UInt8.self) else { return .incomplete }
        let host: String
        switch type {
        case 1:
            guard let bytes = buffer.readBytes(length: 4) else { return .incomplete }
            host = IPNetwork(bytes: bytes, prefix: 32).address
        case 4:
            guard let bytes = buffer.readBytes(length: 16) else { return .incomplete }
            host = IPNetwork(bytes: bytes, prefix: 128).address
        case 3:
            guard let length = buffer.readInteger(as: UInt8.self) else { return .incomplete }
            guard length > 0 else { return .malformed("empty host name") }
            guard let name = buffer.readBytes(length: Int(length)) else { return .incomplete }
            host = String(decoding: name, as: UTF8.self)
        default:
            return .malformed("address type \(type)")
        }
        guard let port = buffer.readInteger(as: UInt16.self) else { return .incomplete }
        return .destination(Destination(host: host, port: Int(port)), length: buffer.readerIndex - start)
    }

    public static func encode(_ destination: Destination) -> ByteBuffer {
        var buffer = ByteBuffer()
        if let bytes = IPNetwork.addressBytes(destination.host) {
            buffer.writeInteger(UInt8(bytes.count == 4 ? 1 : 4))
            buffer.writeBytes(bytes)
        } else {
            let name = Array(destination.host.utf8.prefix(255))
            buffer.writeInteger(UInt8(3))
            buffer.writeInteger(UInt8(name.count))
            buffer.writeBytes(name)
        }
        buffer.writeInteger(UInt16(destination.port))
        return buffer
    }
}
