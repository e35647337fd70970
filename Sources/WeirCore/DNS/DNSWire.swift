/// The DNS wire format (RFC 1035, RFC 6891's OPT) as Weir's DNS users need it — dns.filter, and
/// enforce.nftables resolving its allowlisted domains — without I/O: read a query's question, read a
/// response's records — where each TTL sits (a cached answer is served by copying the
/// upstream's bytes and lowering the TTLs in place, so names compressed in record data never need
/// rewriting), its addresses and the lowest TTL — and write the answers the filter makes itself.
package enum DNSWire {
    package enum RecordType {
        package static let a: UInt16 = 1
        package static let ns: UInt16 = 2
        package static let cname: UInt16 = 5
        package static let soa: UInt16 = 6
        package static let ptr: UInt16 = 12
        package static let aaaa: UInt16 = 28
        package static let opt: UInt16 = 41
        package static let https: UInt16 = 65
    }

    private static let typeNames: [UInt16: String] = [
        1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 35: "NAPTR",
        41: "OPT", 43: "DS", 46: "RRSIG", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS", 255: "ANY", 257: "CAA",
    ]

    /// A record type's mnemonic, TYPEn for the others (RFC 3597).
    package static func typeName(_ type: UInt16) -> String { typeNames[type] ?? "TYPE\(type)" }

    package enum ResponseCode {
        package static let noError: UInt8 = 0
        package static let formatError: UInt8 = 1
        package static let serverFailure: UInt8 = 2
        package static let nameError: UInt8 = 3
        package static let notImplemented: UInt8 = 4
        package static let refused: UInt8 = 5
    }

    package struct Malformed: Error, CustomStringConvertible, Equatable {
        package let description: String
    }

    package struct Question: Equatable, Hashable {
        /// Lowercased, without the final dot; "" for the root.
        package var name: String
        package var type: UInt16
        package var qclass: UInt16

        package init(name: String, type: UInt16, qclass: UInt16) {
            self.name = name
            self.type = type
            self.qclass = qclass
        }
    }

    /// A query as the filter reads it.
    package struct Query: Equatable {
        package var id: UInt16
        package var flags: UInt16
        package var question: Question
        /// The question section as sent (its name's case included), echoed in answers made here; a slice of
        /// the query's bytes, not a copy (a cached answer never needs it).
        package var questionBytes: ArraySlice<UInt8>
        /// The client's EDNS UDP payload size (512 without OPT).
        package var udpPayloadSize: Int

        package var recursionDesired: Bool { flags & 0x0100 != 0 }
        package var opcode: UInt8 { UInt8((flags >> 11) & 0xF) }
    }

    /// A response as the filter reads it.
    package struct Response: Equatable {
        package var id: UInt16
        package var responseCode: UInt8
        package var truncated: Bool
        package var question: Question?
        /// Byte offsets of every record's TTL (OPT's field is not a TTL and is left out).
        package var ttlOffsets: [Int]
        /// The lowest TTL of the answer and authority records (a negative answer's SOA), nil when there are none.
        package var minimumTTL: UInt32?
        /// A and AAAA addresses in the answer section (4 or 16 bytes), with their TTLs.
        package var addresses: [(bytes: [UInt8], ttl: UInt32)]

        package static func == (a: Response, b: Response) -> Bool {
            a.id == b.id && a.responseCode == b.responseCode && a.truncated == b.truncated && a.question == b.question
                && a.ttlOffsets == b.ttlOffsets && a.minimumTTL == b.minimumTTL && a.addresses.map(\.bytes) == b.addresses.map(\.bytes)
                && a.addresses.map(\.ttl) == b.addresses.map(\.ttl)
        }
    }

    // MARK: - Reading

    package struct Reader {
        package let bytes: [UInt8]
        package var offset = 0

        package mutating func u8() throws -> UInt8 {
            guard offset < bytes.count else { throw Malformed(description: "truncated message") }
            defer { offset += 1 }
            return bytes[offset]
        }

        package mutating func u16() throws -> UInt16 { UInt16(try u8()) << 8 | UInt16(try u8()) }
        package mutating func u32() throws -> UInt32 { UInt32(try u16()) << 16 | UInt32(try u16()) }

        package mutating func skip(_ count: Int) throws {
            guard count >= 0, offset + count <= bytes.count else { throw Malformed(description: "truncated message") }
            offset += count
        }

        /// A name, following compression pointers (only backwards, at most 64 of them: no loops), lowercased.
        package mutating func name() throws -> String {
            // Built on the stack (a name is at most 255 bytes): names are read for every query, and a string per
            // label, or a heap array for the text, cost more than answering from the cache.
            try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 256) { text in
                var used = 0
                var length = 0  // on the wire: each label's bytes and length byte
                var position = offset
                var jumped = false
                var jumps = 0
                while true {
                    guard position < bytes.count else { throw Malformed(description: "truncated name") }
                    let byte = bytes[position]
                    if byte & 0xC0 == 0xC0 {
                        guard position + 1 < bytes.count else { throw Malformed(description: "truncated pointer") }
                        let target = Int(byte & 0x3F) << 8 | Int(bytes[position + 1])
                        guard target < position, jumps < 64 else { throw Malformed(description: "bad compression pointer") }
                        if !jumped { offset = position + 2 }
                        jumped = true
                        jumps += 1
                        position = target
                        continue
                    }
                    guard byte & 0xC0 == 0 else { throw Malformed(description: "unknown label type") }
                    let count = Int(byte)
                    if count == 0 {
                        if !jumped { offset = position + 1 }
                        return String(decoding: UnsafeBufferPointer(rebasing: text[0..<used]), as: UTF8.self)
                    }
                    guard position + 1 + count <= bytes.count else { throw Malformed(description: "truncated label") }
                    length += count + 1
                    guard length <= 255 else { throw Malformed(description: "name longer than 255 bytes") }
                    if used > 0 {
                        text[used] = 0x2E
                        used += 1
                    }
                    for index in (position + 1)...(position + count) {
                        let character = bytes[index]
                        text[used] = character >= 65 && character <= 90 ? character + 32 : character
                        used += 1
                    }
                    position += 1 + count
                }
            }
        }
    }

    /// A query: exactly one question (what every resolver sends), QR clear.
    package static func parseQuery(_ bytes: [UInt8]) throws -> Query {
        var reader = Reader(bytes: bytes)
        let id = try reader.u16()
        let flags = try reader.u16()
        guard flags & 0x8000 == 0 else { throw Malformed(description: "a response, not a query") }
        let questions = try reader.u16()
        let answers = try reader.u16()
        let authorities = try reader.u16()
        let additionals = try reader.u16()
        guard questions == 1, answers == 0 else { throw Malformed(description: "a query carries one question") }
        let start = reader.offset
        let name = try reader.name()
        let type = try reader.u16()
        let qclass = try reader.u16()
        let questionBytes = bytes[start..<reader.offset]
        var payload = 512
        // EDNS: the OPT record's class is the client's UDP payload size.
        if additionals > 0 {
            // A query's authority section is empty by RFC; skip whatever is there anyway.
            try skipRecords(&reader, count: Int(authorities))
            for _ in 0..<Int(additionals) {
                _ = try reader.name()
                let recordType = try reader.u16()
                let recordClass = try reader.u16()
                try reader.skip(4)
                try reader.skip(Int(try reader.u16()))
                if recordType == RecordType.opt { payload = max(512, min(Int(recordClass), 4096)) }
            }
        }
        return Query(id: id, flags: flags, question: Question(name: name, type: type, qclass: qclass), questionBytes: questionBytes, udpPayloadSize: payload)
    }

    private static func skipRecords(_ reader: inout Reader, count: Int) throws {
        for _ in 0..<count {
            _ = try reader.name()
            try reader.skip(8)
            try reader.skip(Int(try reader.u16()))
        }
    }

    package static func parseResponse(_ bytes: [UInt8]) throws -> Response {
        var reader = Reader(bytes: bytes)
        let id = try reader.u16()
        let flags = try reader.u16()
        guard flags & 0x8000 != 0 else { throw Malformed(description: "a query, not a response") }
        let counts = [try reader.u16(), try reader.u16(), try reader.u16(), try reader.u16()]
        var question: Question?
        for index in 0..<Int(counts[0]) {
            let name = try reader.name()
            let q = Question(name: name, type: try reader.u16(), qclass: try reader.u16())
            if index == 0 { question = q }
        }
        var response = Response(
            id: id, responseCode: UInt8(flags & 0xF), truncated: flags & 0x0200 != 0, question: question, ttlOffsets: [], minimumTTL: nil,
            addresses: [])
        for (section, count) in counts.dropFirst().enumerated() {
            for _ in 0..<Int(count) {
                _ = try reader.name()
                let type = try reader.u16()
                _ = try reader.u16()
                let ttlOffset = reader.offset
                let ttl = try reader.u32()
                let length = Int(try reader.u16())
                let dataStart = reader.offset
                try reader.skip(length)
                guard type != RecordType.opt else { continue }
                response.ttlOffsets.append(ttlOffset)
                if section < 2 { response.minimumTTL = min(response.minimumTTL ?? ttl, ttl) }
                if section == 0, (type == RecordType.a && length == 4) || (type == RecordType.aaaa && length == 16) {
                    response.addresses.append((Array(bytes[dataStart..<(dataStart + length)]), ttl))
                }
            }
        }
        return response
    }

    // MARK: - Writing

    /// `bytes` with its id replaced and every TTL lowered by `age` seconds (never below `floor`).
    package static func served(_ bytes: [UInt8], id: UInt16, ttlOffsets: [Int], age: UInt32, floor: UInt32 = 0) -> [UInt8] {
        var copy = bytes
        copy.withUnsafeMutableBytes { serve($0, id: id, ttlOffsets: ttlOffsets, age: age, floor: floor) }
        return copy
    }

    /// `bytes` with every TTL brought into `lower...upper` (a cache's min_ttl and max_ttl, so clients keep an
    /// answer no longer than the cache does).
    package static func clampingTTLs(_ bytes: [UInt8], ttlOffsets: [Int], to range: ClosedRange<UInt32>) -> [UInt8] {
        var copy = bytes
        copy.withUnsafeMutableBytes { rewriteTTLs($0, ttlOffsets: ttlOffsets) { min(max($0, range.lowerBound), range.upperBound) } }
        return copy
    }

    /// `served` in place: a stored answer already copied into `message` (a datagram's send buffer) gets
    /// `id` and its TTLs lowered by `age`.
    package static func serve(_ message: UnsafeMutableRawBufferPointer, id: UInt16, ttlOffsets: [Int], age: UInt32, floor: UInt32 = 0) {
        guard message.count >= 2 else { return }
        message[0] = UInt8(id >> 8)
        message[1] = UInt8(id & 0xFF)
        rewriteTTLs(message, ttlOffsets: ttlOffsets) { ttl in max(ttl > age ? ttl - age : 0, floor) }
    }

    /// Replaces each TTL at `ttlOffsets` (big-endian, 4 bytes; offsets past the end are skipped) by `change` of it.
    private static func rewriteTTLs(_ message: UnsafeMutableRawBufferPointer, ttlOffsets: [Int], _ change: (UInt32) -> UInt32) {
        for offset in ttlOffsets where offset >= 0 && offset + 4 <= message.count {
            let ttl = UInt32(message[offset]) << 24 | UInt32(message[offset + 1]) << 16 | UInt32(message[offset + 2]) << 8 | UInt32(message[offset + 3])
            let changed = change(ttl)
            message[offset] = UInt8(changed >> 24)
            message[offset + 1] = UInt8((changed >> 16) & 0xFF)
            message[offset + 2] = UInt8((changed >> 8) & 0xFF)
            message[offset + 3] = UInt8(changed & 0xFF)
        }
    }

    /// An answer made here: the query's question echoed, then `records` owned by the question's name (a
    /// compression pointer to it), then `others` owned by names of their own (a CNAME's target).
    package static func answer(
        to query: Query, code: UInt8, records: [(type: UInt16, ttl: UInt32, data: [UInt8])] = [],
        others: [(owner: String, type: UInt16, ttl: UInt32, data: [UInt8])] = [], authoritative: Bool = false
    ) -> [UInt8] {
        var flags: UInt16 = 0x8000 | (query.flags & 0x7900) | 0x0080 | UInt16(code)  // QR, opcode+RD kept, RA
        if authoritative { flags |= 0x0400 }
        let count = records.count + others.count
        var bytes: [UInt8] = [UInt8(query.id >> 8), UInt8(query.id & 0xFF), UInt8(flags >> 8), UInt8(flags & 0xFF), 0, 1]
        bytes += [UInt8(count >> 8), UInt8(count & 0xFF), 0, 0, 0, 0]
        bytes += query.questionBytes
        func append(_ owner: [UInt8], _ type: UInt16, _ ttl: UInt32, _ data: [UInt8]) {
            bytes += owner + [UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
            bytes += [UInt8(ttl >> 24), UInt8((ttl >> 16) & 0xFF), UInt8((ttl >> 8) & 0xFF), UInt8(ttl & 0xFF)]
            bytes += [UInt8(data.count >> 8), UInt8(data.count & 0xFF)] + data
        }
        for record in records { append([0xC0, 12], record.type, record.ttl, record.data) }
        for record in others { append(encodeName(record.owner), record.type, record.ttl, record.data) }
        return bytes
    }

    /// A FORMERR for bytes that are not a query, echoing the id when there is one.
    package static func formatError(_ bytes: [UInt8]) -> [UInt8]? {
        guard bytes.count >= 12, bytes[2] & 0x80 == 0 else { return nil }
        return [bytes[0], bytes[1], 0x80, 0x80 | ResponseCode.formatError, 0, 0, 0, 0, 0, 0, 0, 0]
    }

    /// `name` in wire form (for CNAME data): labels, no compression.
    package static func encodeName(_ name: String) -> [UInt8] {
        var bytes: [UInt8] = []
        for label in name.split(separator: ".") where !label.isEmpty {
            bytes.append(UInt8(min(label.utf8.count, 63)))
            bytes += label.utf8.prefix(63)
        }
        return bytes + [0]
    }

    /// A query for `name` (to upstreams: the client's query is forwarded as it came, with our id).
    package static func query(id: UInt16, name: String, type: UInt16) -> [UInt8] {
        [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0] + encodeName(name) + [UInt8(type >> 8), UInt8(type & 0xFF), 0, 1]
    }
}
