import CWeirSystem
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// Where a plain forward connects: fixed addresses tried in order, each given `connectTimeout` — all a
/// connector must say for its connections to be relayed on raw sockets (see StreamRelayThread).
public struct DirectTargets: Sendable {
    public let addresses: [SocketAddress]
    public let connectTimeout: Duration
    /// The same, for the relay's monotonic clock.
    let connectTimeoutNanoseconds: UInt64

    public init(addresses: [SocketAddress], connectTimeout: Duration) {
        self.addresses = addresses
        self.connectTimeout = connectTimeout
        connectTimeoutNanoseconds = UInt64(max(TimeAmount(connectTimeout).nanoseconds, 0))
    }
}

/// One client connection relayed by a StreamRelayThread: its two sockets, its two directions and the pipes
/// they hold while bytes are in them. Touched only on its thread.
final class SplicedConnection {
    enum State {
        /// Connecting to target number `attempt`; `errors` says why the ones before failed.
        case connecting(attempt: Int, errors: [String])
        case relaying
    }

    let client: Int32
    var target: Int32 = -1
    let forwarder: StreamForwarder
    let targets: DirectTargets
    /// Gives back the connection's places in the listener's and the agent's budgets.
    let releaseBudgets: @Sendable () -> Void
    let tag: UInt64
    var state = State.connecting(attempt: 0, errors: [])
    /// When the current connect attempt gives up (monotonic nanoseconds).
    var connectDeadline: UInt64 = 0
    var lastActivity: UInt64
    var toTarget = RelayedDirection()
    var toClient = RelayedDirection()
    var closed = false

    init(client: Int32, forwarder: StreamForwarder, targets: DirectTargets, releaseBudgets: @escaping @Sendable () -> Void, tag: UInt64, now: UInt64) {
        self.client = client
        self.forwarder = forwarder
        self.targets = targets
        self.releaseBudgets = releaseBudgets
        self.tag = tag
        lastActivity = now
    }

    /// Both directions ended and were passed on.
    var isFinished: Bool { toTarget.state.shut && toClient.state.shut }
}

/// One direction of a relayed connection: its state, what holds its bytes, and whether it splices.
struct RelayedDirection {
    var state = SpliceDirection()
    var holding: SpliceHolding?
    /// Whether the direction has carried bulk data, and so splices.
    var bulk = false
    /// The direction's rate limits, if its pipeline has any.
    var pacing: RelayPacing?

    /// Pumps from `source` to `destination` (see SpliceDirection.pump); the scratch buffer is free again after.
    mutating func pump(
        from source: Int32, to destination: Int32, pool: SplicePipePool, scratch: HeldBytes, limit: Int, otherFinished: Bool,
        reading: Bool
    ) -> (read: Int, outcome: SpliceDirection.Outcome) {
        var moves = SpliceMoves(source: source, destination: destination, holding: holding, bulk: bulk, pool: pool, scratch: scratch)
        // A paced direction reads one fill at a time, so its pacers are asked before each.
        let limit = pacing == nil ? limit : min(limit, SpliceDirection.fillSize)
        let result = state.pump(&moves, limit: limit, otherFinished: otherFinished, reading: reading)
        holding = moves.kept(buffered: state.buffered)
        bulk = moves.bulk
        if result.read > 0 { pacing?.consumed(result.read) }
        return result
    }
}

/// A pipe a direction borrows from its thread's pool while bytes are in it.
struct SplicePipe {
    let read: Int32
    let write: Int32

    func close() {
        Glibc.close(read)
        Glibc.close(write)
    }
}

/// Where a direction's bytes wait between source and destination.
///
/// Like HAProxy's splice-auto: a direction starts by copying — bytes are read into the thread's scratch buffer
/// and sent on at once, two cheap system calls for the small messages most connections carry — and switches to
/// a pipe (spliced, never copied into user memory) once a read is large (SpliceMoves.bulkRead), i.e. for bulk
/// transfers.
/// Bytes the destination did not take stay in a buffer of the connection's own (or in its pipe). When no pipe
/// can be had (the pool's bound, or no descriptors left), a bulk direction keeps copying.
enum SpliceHolding {
    case pipe(SplicePipe)
    case buffer(HeldBytes)

    var isEmptyBuffer: Bool {
        if case .buffer(let bytes) = self { return bytes.count == 0 }
        return false
    }

    /// Gives back a pipe that may still hold bytes (the connection ends): it is closed.
    func discard(to pool: SplicePipePool) {
        if case .pipe(let pipe) = self { pool.discard(pipe) }
    }
}

/// Bytes read and not yet written: the thread's scratch buffer, or a direction's own for what its destination
/// did not take.
final class HeldBytes {
    private let storage = UnsafeMutableRawPointer.allocate(byteCount: SpliceDirection.fillSize, alignment: 16)
    private var start = 0
    private var end = 0

    init() {}

    /// A buffer holding what `other` holds (the scratch buffer's rest, kept by its direction).
    init(copying other: HeldBytes) {
        end = other.count
        storage.copyMemory(from: other.storage + other.start, byteCount: end)
    }

    var count: Int { end - start }

    func reset() {
        start = 0
        end = 0
    }

    func read(from fd: Int32, _ length: Int) -> Int {
        if start > 0 {
            storage.copyMemory(from: storage + start, byteCount: end - start)
            end -= start
            start = 0
        }
        let got = Glibc.read(fd, storage + end, min(length, SpliceDirection.fillSize - end))
        guard got >= 0 else { return -Int(errno) }
        end += got
        return got
    }

    func write(to fd: Int32, _ length: Int) -> Int {
        let sent = Glibc.send(fd, storage + start, min(length, end - start), Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
        guard sent >= 0 else { return -Int(errno) }
        start += sent
        return sent
    }

    deinit { storage.deallocate() }
}

/// The moves of one direction on real descriptors; what holds the bytes is chosen on the first fill.
struct SpliceMoves: SpliceDirection.Moves {
    let source: Int32
    let destination: Int32
    var holding: SpliceHolding?
    /// Whether this direction has carried bulk data (a read of `bulkRead` bytes or more): it then splices.
    var bulk: Bool
    /// A read this large is a transfer, not a message: loopback hands over up to 64 KiB per segment, a network
    /// link a few segments per wakeup; requests and small answers stay far below.
    static let bulkRead = 16384
    let pool: SplicePipePool
    let scratch: HeldBytes

    mutating func fill(_ length: Int) -> Int {
        // Bulk and nothing held in a buffer: on to a pipe (the switch happens here, mid-transfer, too).
        if bulk, holding.map(\.isEmptyBuffer) ?? true, case .success(let pipe) = pool.take() {
            holding = .pipe(pipe)
        }
        if holding == nil { holding = .buffer(scratch) }
        switch holding {
        case .pipe(let pipe): return weir_splice(source, pipe.write, length)
        case .buffer(let bytes):
            let got = bytes.read(from: source, length)
            if got >= Self.bulkRead { bulk = true }
            return got
        case nil: return -Int(EPIPE)
        }
    }

    mutating func drain(_ length: Int) -> Int {
        switch holding {
        case .pipe(let pipe): return weir_splice(pipe.read, destination, length)
        case .buffer(let bytes): return bytes.write(to: destination, length)
        case nil: return -Int(EPIPE)
        }
    }

    mutating func shutDown() {
        Glibc.shutdown(destination, Int32(SHUT_WR))
    }

    /// After a pump: an empty pipe goes back to the pool, the scratch buffer back to the thread (what the
    /// destination did not take moves to a buffer of the direction's own). Returns what the direction keeps.
    func kept(buffered: Int) -> SpliceHolding? {
        switch holding {
        case .buffer(let bytes) where bytes === scratch:
            defer { scratch.reset() }
            return buffered == 0 ? nil : .buffer(HeldBytes(copying: scratch))
        case .buffer where buffered == 0: return nil
        case .pipe(let pipe) where buffered == 0:
            pool.give(pipe)
            return nil
        default: return holding
        }
    }
}

/// A thread's empty pipes, kept for the next direction that needs one (a pipe costs two descriptors and a
/// system call to make; most directions hold one only for an instant). Beyond one, pipes go when none was
/// taken for a sweep interval, and all of them when the thread has no connection: connections that idle hold
/// no descriptors for them.
final class SplicePipePool {
    private var pipes: [SplicePipe] = []
    private var taken = false
    /// Pipes lent out now, and at most.
    private var lent = 0
    private let maxLent: Int
    /// Empty pipes kept at most; more are closed when given back.
    static let kept = 32
    /// Each pipe's capacity: what one splice moves at most.
    static let capacity = Int32(SpliceDirection.fillSize)

    /// `maxLent`: pipes in use at once at most — a slow reader makes its direction hold one, so without a bound
    /// clients could spend the agent's descriptors on pipes; past it, directions hold their bytes in buffers.
    init(maxLent: Int) { self.maxLent = maxLent }

    /// A share of `descriptors` for one of `threads` pools: at most a quarter of all descriptors in pipes.
    static func maxLent(descriptors: Int, threads: Int) -> Int { max(1, descriptors / 8 / max(threads, 1)) }

    func take() -> Result<SplicePipe, IOError> {
        taken = true
        guard lent < maxLent else { return .failure(IOError(errnoCode: EMFILE, reason: "pipe pool")) }
        if let pipe = pipes.popLast() {
            lent += 1
            return .success(pipe)
        }
        var fds: [Int32] = [-1, -1]
        let result = weir_pipe_open(&fds, Self.capacity)
        guard result == 0 else { return .failure(IOError(errnoCode: -result, reason: "pipe2")) }
        lent += 1
        return .success(SplicePipe(read: fds[0], write: fds[1]))
    }

    /// Takes back an empty pipe.
    func give(_ pipe: SplicePipe) {
        lent -= 1
        if pipes.count < Self.kept {
            pipes.append(pipe)
        } else {
            pipe.close()
        }
    }

    /// Takes back a pipe that may hold bytes: it is closed.
    func discard(_ pipe: SplicePipe) {
        lent -= 1
        pipe.close()
    }

    /// Closes all pipes but one if none was taken since the last call.
    func trim() {
        if !taken {
            pipes.dropFirst().forEach { $0.close() }
            pipes = Array(pipes.prefix(1))
        }
        taken = false
    }

    /// Closes the pipes kept.
    func empty() {
        pipes.forEach { $0.close() }
        pipes = []
    }

    deinit { empty() }
}
