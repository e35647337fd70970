import Glibc
import NIOCore
import Testing

@testable import WeirCore

/// The splice relay's direction logic, with scripted system calls: what it reads, when it stops, when it
/// shuts down the destination — the cases an edge-triggered relay gets wrong silently (a lost edge stalls a
/// connection for good).
@Suite struct SpliceDirectionTests {
    /// Answers the direction's moves from scripts; records what it was asked.
    struct Script: SpliceDirection.Moves {
        var fills: [Int]
        var drains: [Int]
        var asked: [String] = []
        var shutDowns = 0

        mutating func fill(_ length: Int) -> Int {
            asked.append("fill \(length)")
            return fills.isEmpty ? -Int(EAGAIN) : fills.removeFirst()
        }

        mutating func drain(_ length: Int) -> Int {
            asked.append("drain \(length)")
            return drains.isEmpty ? -Int(EAGAIN) : drains.removeFirst()
        }

        mutating func shutDown() { shutDowns += 1 }
    }

    @Test("Bytes move through while both sides are ready; a drained source stops the pump and clears its readiness")
    func movesUntilTheSourceIsDrained() {
        var direction = SpliceDirection()
        var script = Script(fills: [1000, 500, -Int(EAGAIN)], drains: [1000, 500])
        let (read, outcome) = direction.pump(&script, limit: 1 << 20)
        #expect(read == 1500)
        #expect(outcome == .waiting)
        #expect(direction.buffered == 0)
        #expect(!direction.sourceReadable, "EAGAIN on an empty pipe: the socket is drained, wait for its next edge")
        #expect(direction.destinationWritable)
    }

    @Test("EAGAIN from a fill while the pipe holds bytes is a full pipe, not a drained source: readiness is kept")
    func fullPipeKeepsTheSourceReadable() {
        var direction = SpliceDirection()
        // 16 small pieces fill the pipe; the destination then takes nothing.
        var script = Script(fills: [300, -Int(EAGAIN)], drains: [-Int(EAGAIN)])
        let (read, outcome) = direction.pump(&script, limit: 1 << 20)
        #expect(read == 300)
        #expect(outcome == .waiting)
        #expect(direction.sourceReadable, "clearing it here would lose the only edge the socket gives")
        #expect(!direction.destinationWritable)
        #expect(direction.buffered == 300)
        // The destination's edge comes: the pipe drains, then the source is read again.
        direction.destinationWritable = true
        var later = Script(fills: [200, -Int(EAGAIN)], drains: [300, 200])
        let (more, _) = direction.pump(&later, limit: 1 << 20)
        #expect(more == 200)
        #expect(direction.buffered == 0)
        #expect(later.asked.first == "drain 300")
    }

    @Test("A blocked destination stops the reading (backpressure): nothing more than one pipe is read")
    func blockedDestinationStopsReading() {
        var direction = SpliceDirection()
        var script = Script(fills: [65536, 65536], drains: [-Int(EAGAIN)])
        let (read, outcome) = direction.pump(&script, limit: 1 << 20)
        #expect(read == 65536)
        #expect(outcome == .waiting)
        #expect(script.fills == [65536], "the second fill was never asked for")
    }

    @Test("The end of input shuts the destination down once, after the pipe has drained")
    func endOfInputShutsDownAfterDraining() {
        var direction = SpliceDirection()
        var script = Script(fills: [100, 0], drains: [-Int(EAGAIN)])
        _ = direction.pump(&script, limit: 1 << 20)
        #expect(direction.ended)
        #expect(script.shutDowns == 0, "100 bytes still in the pipe")
        #expect(!direction.shut)
        direction.destinationWritable = true
        var later = Script(fills: [], drains: [100])
        _ = direction.pump(&later, limit: 1 << 20)
        #expect(later.shutDowns == 1)
        #expect(direction.shut)
        #expect(!later.asked.contains { $0.hasPrefix("fill") }, "nothing is read after the end")
        var again = Script(fills: [], drains: [])
        _ = direction.pump(&again, limit: 1 << 20)
        #expect(again.shutDowns == 0)
    }

    @Test("When the other direction has finished, the end of input is left to the close: no shutdown call")
    func lastEndSkipsTheShutdown() {
        var direction = SpliceDirection()
        var script = Script(fills: [5, 0], drains: [5])
        _ = direction.pump(&script, limit: 1 << 20, otherFinished: true)
        #expect(direction.shut)
        #expect(script.shutDowns == 0)
    }

    @Test("Errors end the direction with their errno, from either side")
    func errorsFail() {
        var reading = SpliceDirection()
        var reset = Script(fills: [-Int(ECONNRESET)], drains: [])
        #expect(reading.pump(&reset, limit: 1 << 20).outcome == .failed(ECONNRESET))
        var writing = SpliceDirection()
        var broken = Script(fills: [10], drains: [-Int(EPIPE)])
        #expect(writing.pump(&broken, limit: 1 << 20).outcome == .failed(EPIPE))
    }

    @Test("A direction stops at its limit and says there is more, so other connections get their turn")
    func fairnessLimit() {
        var direction = SpliceDirection()
        var script = Script(fills: Array(repeating: 65536, count: 40), drains: Array(repeating: 65536, count: 40))
        let (read, outcome) = direction.pump(&script, limit: 4 * 65536)
        #expect(read == 4 * 65536)
        #expect(outcome == .more)
    }

    @Test("A paced direction that may not read still drains what it holds, and keeps the source's readiness")
    func pacedDirectionDrainsButDoesNotRead() {
        var direction = SpliceDirection()
        var first = Script(fills: [4000, -Int(EAGAIN)], drains: [-Int(EAGAIN)])
        _ = direction.pump(&first, limit: 1 << 20)
        #expect(direction.buffered == 4000)
        direction.destinationWritable = true
        var waiting = Script(fills: [1000], drains: [4000])
        let (read, outcome) = direction.pump(&waiting, limit: 1 << 20, reading: false)
        #expect(read == 0)
        #expect(outcome == .waiting)
        #expect(direction.buffered == 0, "what was read before the wait still reaches the destination")
        #expect(waiting.asked == ["drain 4000"], "the source is not read while its pacers hold it back")
        #expect(direction.sourceReadable, "the edge is kept: the wait ends with a read, not with a lost wakeup")
    }
}

/// The direction's moves on real (non-blocking Unix) sockets: through a pipe, and through a buffer when the
/// pipe pool has none to lend.
@Suite struct SpliceMovesTests {
    /// Two connected non-blocking socket pairs; closed at the end.
    static func withSockets<Result>(_ body: (_ source: (Int32, Int32), _ destination: (Int32, Int32)) throws -> Result) rethrows -> Result {
        var a: [Int32] = [-1, -1], b: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue)
        precondition(socketpair(AF_UNIX, type, 0, &a) == 0 && socketpair(AF_UNIX, type, 0, &b) == 0)
        defer { (a + b).forEach { _ = close($0) } }
        return try body((a[0], a[1]), (b[0], b[1]))
    }

    static func relay(_ text: String, maxPipes: Int, bulk: Bool) -> (arrived: String, heldIn: String, ended: Bool) {
        withSockets { source, destination in
            let pool = SplicePipePool(maxLent: maxPipes)
            _ = text.withCString { send(source.1, $0, strlen($0), 0) }
            shutdown(source.1, Int32(SHUT_WR))
            var direction = SpliceDirection()
            var moves = SpliceMoves(source: source.0, destination: destination.0, holding: nil, bulk: bulk, pool: pool, scratch: HeldBytes())
            _ = direction.pump(&moves, limit: 1 << 20)
            let heldIn = switch moves.holding {
            case .pipe: "pipe"
            case .buffer: "buffer"
            case nil: "nothing"
            }
            var bytes = [UInt8](repeating: 0, count: 256)
            let got = recv(destination.1, &bytes, bytes.count, Int32(MSG_DONTWAIT))
            let eof = recv(destination.1, &bytes[255], 1, Int32(MSG_DONTWAIT)) == 0
            return (String(decoding: bytes.prefix(max(got, 0)), as: UTF8.self), heldIn, eof && direction.shut)
        }
    }

    @Test("A direction that carries bulk data passes bytes and the end of input through a pipe")
    func bulkThroughAPipe() {
        let result = Self.relay("spliced bytes", maxPipes: 1, bulk: true)
        #expect(result.arrived == "spliced bytes")
        #expect(result.heldIn == "pipe")
        #expect(result.ended)
    }

    @Test("Small messages are copied through the scratch buffer; so are bulk ones when no pipe can be lent")
    func copied() {
        for (bulk, maxPipes) in [(false, 1), (true, 0)] {
            let result = Self.relay("copied bytes", maxPipes: maxPipes, bulk: bulk)
            #expect(result.arrived == "copied bytes")
            #expect(result.heldIn == "buffer")
            #expect(result.ended)
        }
    }

    @Test("A large read marks the direction bulk; what the destination did not take leaves the scratch buffer")
    func bulkDetectionAndScratchHandOver() throws {
        try Self.withSockets { source, destination in
            var size = Int32(64 << 10)
            setsockopt(source.1, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            let payload = [UInt8](repeating: 7, count: SpliceDirection.fillSize)
            var offset = 0
            while offset < payload.count {
                let sent = payload[offset...].withUnsafeBytes { send(source.1, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                guard sent > 0 else { break }
                offset += sent
            }
            try #require(offset == payload.count)
            let scratch = HeldBytes()
            var moves = SpliceMoves(
                source: source.0, destination: destination.0, holding: nil, bulk: false, pool: SplicePipePool(maxLent: 1), scratch: scratch)
            // Only the read: the destination is not asked, as when it is not writable.
            var direction = SpliceDirection()
            direction.destinationWritable = false
            let (read, _) = direction.pump(&moves, limit: 1 << 20)
            #expect(read == SpliceDirection.fillSize)
            #expect(moves.bulk, "a large read: the next bytes are spliced")
            let kept = moves.kept(buffered: direction.buffered)
            guard case .buffer(let own) = kept else {
                Issue.record("the unsent bytes must stay with the direction")
                return
            }
            #expect(own !== scratch)
            #expect(own.count == SpliceDirection.fillSize)
            #expect(scratch.count == 0, "the scratch buffer is free for the next connection")
        }
    }

    @Test("The pool lends at most its bound at once; pipes given back are lent again")
    func poolBound() throws {
        let pool = SplicePipePool(maxLent: 2)
        let first = try pool.take().get(), second = try pool.take().get()
        #expect(throws: IOError.self) { try pool.take().get() }
        pool.give(first)
        let again = try pool.take().get()
        #expect(again.read == first.read, "the kept pipe is lent again, not a new one made")
        pool.discard(second)
        pool.discard(again)
        pool.empty()
    }
}
