/// The DNS wire format for what the allowlist needs: A and AAAA questions, and the addresses and TTLs of
/// the answers (CNAME chains included: the answer section carries the final records). No I/O here.
enum DNSMessage {
    enum RecordType: UInt16 {
        case a = 1
        case aaaa = 28
    }

    enum ResponseCode: Equatable {
        case noError, nameError, other(UInt8)
    }

    struct Answer: Equatable {
        var address: [UInt8]
        var ttl: UInt32
    }

    struct Response: Equatable {
        var id: UInt16
        var code: ResponseCode
        var truncated: Bool
        var answers: [Answer]
    }

    struct MalformedResponse: Error, CustomStringConvertible {
        var description: String { "malformed DNS response" }
    }

    /// A recursive query for `name`.
    static func query(id: UInt16, name: String, type: RecordType) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            bytes.append(UInt8(label.utf8.count))
            bytes.append(contentsOf: label.utf8)
        }
        bytes += [0, UInt8(type.rawValue >> 8), UInt8(type.rawValue & 0xFF), 0, 1]
        return bytes
    }

    /// Parses a response, keeping the answers of `type`.
    static func parse(_ bytes: [UInt8], type: RecordType) throws -> Response {
        var reader = Reader(bytes: bytes)
        let id = try reader.u16()
        let flags = try reader.u16()
        let questions = try reader.u16()
        let answerCount = try reader.u16()
        _ = try reader.u16()
        _ = try reader.u16()
        for _ in 0..<questions {
            try reader.skipName()
            _ = try reader.u16()
            _ = try reader.u16()
        }
        var answers: [Answer] = []
        for _ in 0..<answerCount {
            try reader.skipName()
            let recordType = try reader.u16()
            let recordClass = try reader.u16()
            let ttl = try reader.u32()
            let length = Int(try reader.u16())
            let data = try reader.take(length)
            if recordType == type.rawValue, recordClass == 1, data.count == (type == .a ? 4 : 16) {
                answers.append(Answer(address: data, ttl: ttl))
            }
        }
        let rcode = UInt8(flags & 0x000F)
        let code: ResponseCode = rcode == 0 ? .noError : rcode == 3 ? .nameError : .other(rcode)
        return Response(id: id, code: code, truncated: flags & 0x0200 != 0, answers: answers)
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func take(_ count: Int) throws -> [UInt8] {
            guard count >= 0, offset + count <= bytes.count else { throw MalformedResponse() }
            defer { offset += count }
            return Array(bytes[offset..<offset + count])
        }
        mutating func u16() throws -> UInt16 {
            let two = try take(2)
            return UInt16(two[0]) << 8 | UInt16(two[1])
        }
        mutating func u32() throws -> UInt32 {
            let four = try take(4)
            return four.reduce(0) { $0 << 8 | UInt32($1) }
        }
        /// Names are skipped, not followed: a compression pointer ends the name in two bytes.
        mutating func skipName() throws {
            while true {
                let length = try take(1)[0]
                if length == 0 { return }
                if length & 0xC0 == 0xC0 {
                    _ = try take(1)
                    return
                }
                _ = try take(Int(length))
            }
        }
    }
}
