#if canImport(Glibc)
import Glibc
#endif

/// What one direction of a spliced connection does with its source, its pipe and its destination: bytes move
/// source → pipe → destination with splice(2), never through user memory.
///
/// The sockets are watched edge-triggered, so a readiness flag is cleared only by an attempt that would block,
/// and set again by the next edge. One subtlety decides the order of the steps: a pipe holds at most 16 pieces
/// of data, not 64 KiB, so a fill can also fail with EAGAIN because the pipe is full of small pieces while the
/// socket still has bytes. Only an EAGAIN on an empty pipe says the source is drained; any other one waits for
/// the destination to take what the pipe holds.
///
/// Backpressure: bytes are read only into the pipe, so a destination that does not take them stops the source
/// from being read (the client's kernel buffers fill, TCP flow control does the rest). Half-close: the end of
/// the source's input shuts down the destination's output once the pipe is empty.
struct SpliceDirection {
    /// Bytes asked of the source per fill: a pipe's default capacity.
    static let fillSize = 65536

    /// Bytes read from the source that the destination has not taken yet.
    private(set) var buffered = 0
    /// Whether the source may have input (or its end, or an error) to read.
    var sourceReadable = true
    /// Whether the destination may take bytes (or report its error).
    var destinationWritable = true
    /// The source's end of input was read.
    private(set) var ended = false
    /// The destination's output was shut down after the end of input.
    private(set) var shut = false

    /// How a pump ended.
    enum Outcome: Equatable {
        /// Nothing more can move until a socket reports readiness.
        case waiting
        /// `limit` bytes moved: there may be more, after other connections had their turn.
        case more
        /// The source or the destination failed with this errno: the connection ends.
        case failed(Int32)
    }

    /// The data moves the direction makes: the splice calls, and the shutdown of the destination's output.
    protocol Moves {
        /// Moves up to `length` bytes from the source into the pipe: the count, 0 at the end of input, or a
        /// negative errno.
        mutating func fill(_ length: Int) -> Int
        /// Moves up to `length` bytes from the pipe to the destination: the count, or a negative errno.
        mutating func drain(_ length: Int) -> Int
        /// Shuts down the destination's output.
        mutating func shutDown()
    }

    /// Moves what can move now, at most `limit` bytes read; `read` is what was read from the source (what the
    /// byte counters count, as the channel path counts bytes read). `otherFinished`: the other direction has
    /// ended and passed its end on, so the connection closes as soon as this one ends too — the close sends
    /// the end of input, and the shutdown is skipped. `reading`: whether the source may be read (a paced
    /// direction waits; what it holds still drains, and its readiness is kept for later).
    mutating func pump(
        _ moves: inout some Moves, limit: Int, otherFinished: Bool = false, reading: Bool = true
    ) -> (read: Int, outcome: Outcome) {
        var read = 0
        while read < limit {
            var progressed = false
            if buffered > 0, destinationWritable {
                let moved = moves.drain(buffered)
                if moved > 0 {
                    buffered -= moved
                    progressed = true
                } else if moved == -EAGAIN {
                    destinationWritable = false
                } else {
                    return (read, .failed(Int32(truncatingIfNeeded: moved == 0 ? Int(EPIPE) : -moved)))
                }
            }
            if reading, !ended, sourceReadable, buffered < Self.fillSize {
                let moved = moves.fill(Self.fillSize - buffered)
                if moved > 0 {
                    buffered += moved
                    read += moved
                    progressed = true
                } else if moved == 0 {
                    ended = true
                    progressed = true
                } else if moved == -EAGAIN {
                    // An empty pipe refused nothing: the source is drained. Else the pipe may be full.
                    if buffered == 0 { sourceReadable = false }
                } else {
                    return (read, .failed(Int32(truncatingIfNeeded: -moved)))
                }
            }
            if ended, buffered == 0, !shut {
                if !otherFinished { moves.shutDown() }
                shut = true
            }
            if !progressed { return (read, .waiting) }
        }
        return (read, .more)
    }
}
