import Foundation
import Testing

/// transform.padding on the wire, against frames built and read by the test itself, and between two agents
/// under AEAD. Everything stays on loopback.
@Suite("transform.padding", .serialized)
struct TransformPaddingTests {
    /// A padded frame as the README describes it, built independently of weir's codec.
    static func frame(_ data: [UInt8], pad: Int) -> [UInt8] {
        [UInt8(data.count >> 8), UInt8(data.count & 0xFF), UInt8(pad >> 8), UInt8(pad & 0xFF)] + data + [UInt8](repeating: 0xAA, count: pad)
    }

    /// Reads one frame: (data, padding length).
    static func readFrame(_ connection: TCPClient) throws -> ([UInt8], Int) {
        let header = try connection.receive(exactly: 4)
        guard header.count == 4 else { return ([], -1) }
        let dataLength = Int(header[0]) << 8 | Int(header[1]), pad = Int(header[2]) << 8 | Int(header[3])
        let body = try connection.receive(exactly: dataLength + pad)
        return (Array(body.prefix(dataLength)), pad)
    }

    @Test("The client side pads every write within the bounds; the server side unpads, and pads its answers")
    func onTheWire() throws {
        let raw = try TCPListener()
        let echo = try Backends.echo()
        let clientPort = freePort(), serverPort = freePort()
        let agent = try WeirProcess(pipelines: """
            pipelines:
              pad-out:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(clientPort)
                  - type: transform.padding
                    side: client
                    min_padding: 16
                    max_padding: 300
                  - type: connect.tcp
                    addresses: [127.0.0.1:\(raw.port)]
              pad-in:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(serverPort)
                  - type: transform.padding
                    side: server
                    min_padding: 16
                    max_padding: 300
                  - type: connect.tcp
                    addresses: [127.0.0.1:\(echo.port)]
            """)
        try agent.start()
        defer { agent.stop() }

        var pads: Set<Int> = []
        for round in 0..<8 {
            let client = try TCPClient(port: clientPort)
            let wire = try raw.accept()
            let message = Array("message \(round)".utf8)
            try client.send(message)
            let (data, pad) = try Self.readFrame(wire)
            #expect(data == message)
            #expect((16...300).contains(pad), "padding \(pad)")
            pads.insert(pad)
            // The answer comes back padded by the test and arrives unpadded.
            try wire.send(Self.frame(Array("answer".utf8), pad: 99))
            #expect(try client.receive(exactly: 6) == Array("answer".utf8))
        }
        #expect(pads.count > 1, "padding lengths vary: \(pads)")

        let padded = try TCPClient(port: serverPort)
        try padded.send(Self.frame(Array("ping".utf8), pad: 0) + Self.frame(Array("pong".utf8), pad: 300))
        let (echoed, echoPad) = try Self.readFrame(padded)
        var all = echoed
        if all.count < 8 { all += try Self.readFrame(padded).0 }
        #expect(all == Array("pingpong".utf8) && (16...300).contains(echoPad))
        // More padding than agreed closes the connection.
        let wrong = try TCPClient(port: serverPort)
        try wrong.send(Self.frame(Array("x".utf8), pad: 301))
        #expect(try wrong.receiveAll().isEmpty)
    }

    @Test("Two agents with padding inside AEAD: 4 MiB each way byte-exact")
    func weirPair() throws {
        let echo = try Backends.echo()
        let entry = freePort(), exit = freePort()
        let agent = try WeirProcess(pipelines: """
            pipelines:
              entry:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(entry)
                  - type: transform.padding
                    side: client
                  - type: transform.aead
                    side: client
                    password: pad secret
                    target: 127.0.0.1:\(echo.port)
                  - type: connect.tcp
                    addresses: [127.0.0.1:\(exit)]
              exit:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:\(exit)
                  - type: transform.aead
                    side: server
                    password: pad secret
                  - type: transform.padding
                    side: server
                  - type: connect.tcp
            """)
        try agent.start()
        defer { agent.stop() }
        let mismatch = try echoMismatch(port: entry, size: 4 << 20, seed: 5)
        #expect(mismatch == nil, "\(mismatch ?? "")")
    }
}
