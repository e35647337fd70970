import NIOCore

/// RFC 1929 username/password sub-negotiation: the client's request, parsed from whatever has arrived so far.
enum UsernamePasswordRequest: Equatable {
    /// Not all of it yet.
    case incomplete
    case credentials(username: String, password: String)
    /// Not a version-1 request.
    case malformed

    /// `VER(1)=1 ULEN(1) UNAME PLEN(1) PASSWD`. Consumes the request once complete: what follows it (a client
    /// may send its CONNECT request along) stays in `input`.
    static func parse(_ input: inout ByteBuffer) -> UsernamePasswordRequest {
        var buffer = input
        let parsed = parse(reading: &buffer)
        if case .credentials = parsed { input = buffer }
        return parsed
    }

    private static func parse(reading buffer: inout ByteBuffer) -> UsernamePasswordRequest {
        guard let version = buffer.readInteger(as: UInt8.self) else { return .incomplete }
        guard version == 1 else { return .malformed }
        guard let userLength = buffer.readInteger(as: UInt8.self) else { return .incomplete }
        guard let user = buffer.readBytes(length: Int(userLength)) else { return .incomplete }
        guard let passwordLength = buffer.readInteger(as: UInt8.self) else { return .incomplete }
        guard let password = buffer.readBytes(length: Int(passwordLength)) else { return .incomplete }
        return .credentials(username: String(decoding: user, as: UTF8.self), password: String(decoding: password, as: UTF8.self))
    }

    /// `VER(1)=1 STATUS(1)`: 0 accepts, anything else refuses (and the server closes).
    static func reply(accepted: Bool, allocator: ByteBufferAllocator) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: 2)
        buffer.writeBytes([1, accepted ? 0 : 1])
        return buffer
    }
}
