import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP2
import WeirCore

/// Which carrier a new stream goes on: the bookkeeping of the client side, without I/O.
///
/// Streams fill the oldest carrier with room first, so traffic stays on as few connections as it can and
/// newer carriers empty out and close when idle. A draining carrier (the server said GOAWAY) takes no more.
struct CarrierBook {
    struct Carrier: Equatable {
        var streams = 0
        var draining = false
        /// When the last stream ended; nil while streams are open.
        var idleSince: NIODeadline?
    }

    enum Choice: Equatable {
        /// An open (or opening) carrier has room.
        case use(Int)
        /// None has room: dial this new one.
        case dial(Int)
    }

    let maxStreams: Int
    private(set) var carriers: [Int: Carrier] = [:]
    private var nextID = 0

    init(maxStreams: Int) { self.maxStreams = maxStreams }

    /// Reserves room for one stream.
    mutating func reserve() -> Choice {
        if let id = carriers.keys.sorted().first(where: { carriers[$0]!.hasRoom(maxStreams) }) {
            carriers[id]!.streams += 1
            carriers[id]!.idleSince = nil
            return .use(id)
        }
        let id = nextID
        nextID += 1
        carriers[id] = Carrier(streams: 1)
        return .dial(id)
    }

    /// A stream on carrier `id` ended.
    mutating func release(_ id: Int, at now: NIODeadline) {
        guard var carrier = carriers[id] else { return }
        carrier.streams = max(0, carrier.streams - 1)
        if carrier.streams == 0 { carrier.idleSince = now }
        carriers[id] = carrier
    }

    /// The peer asked carrier `id` to take no new streams.
    mutating func drain(_ id: Int) { carriers[id]?.draining = true }

    /// Carrier `id` closed (or never opened).
    mutating func remove(_ id: Int) { carriers[id] = nil }

    /// Whether carrier `id` has had no streams for at least `timeout`.
    func isIdle(_ id: Int, at now: NIODeadline, timeout: TimeAmount) -> Bool {
        guard let idleSince = carriers[id]?.idleSince else { return false }
        return now - idleSince >= timeout
    }
}

extension CarrierBook.Carrier {
    func hasRoom(_ maxStreams: Int) -> Bool { !draining && streams < maxStreams }
}

/// The client side's carriers: dialed on demand, shared by every connection of the pipeline whatever loop
/// it runs on, pinged while open, closed when idle.
final class MuxCarriers: Sendable {
    private let config: TransformMuxConfig
    private let metrics: PipelineMetrics
    /// Which carrier has room, and each carrier's connection and HTTP/2 side once dialed: one lock, so a
    /// reservation and the carrier it names are always seen together.
    private let state: NIOLockedValueBox<State>

    private struct State {
        var book: CarrierBook
        var opened: [Int: EventLoopFuture<OpenCarrier>] = [:]
    }

    private struct OpenCarrier: Sendable {
        let channel: any Channel
        let multiplexer: NIOHTTP2Handler.StreamMultiplexer
    }

    init(config: TransformMuxConfig, metrics: PipelineMetrics) {
        self.config = config
        self.metrics = metrics
        state = NIOLockedValueBox(State(book: CarrierBook(maxStreams: config.maxStreams)))
    }

    func openStream(
        destination: Destination?, on eventLoop: any EventLoop, dial: @escaping @Sendable (any EventLoop) -> EventLoopFuture<any Channel>
    ) -> EventLoopFuture<any Channel> {
        // The reservation and the carrier it may need are decided together, so two connections arriving at
        // once on an empty pool share one new carrier instead of dialing two. The dial itself runs outside
        // the lock: its callbacks may run at once and take the lock again.
        let (id, carrier, dialing) = state.withLockedValue { state -> (Int, EventLoopFuture<OpenCarrier>, EventLoopPromise<OpenCarrier>?) in
            switch state.book.reserve() {
            case .use(let id):
                return (id, state.opened[id]!, nil)
            case .dial(let id):
                let promise = eventLoop.makePromise(of: OpenCarrier.self)
                state.opened[id] = promise.futureResult
                return (id, promise.futureResult, promise)
            }
        }
        if let dialing {
            carrier.whenFailure { _ in self.forget(id) }
            dial(eventLoop).flatMap { carrier in
                carrier.eventLoop.submit {
                    do {
                        return try self.setUp(carrier: carrier, id: id)
                    } catch {
                        carrier.close(promise: nil)
                        throw error
                    }
                }
            }.cascade(to: dialing)
        }
        return carrier.flatMap { carrier in
            // A stream asked of a carrier that is already closing may never be created: the carrier's end
            // fails it, so the client connection does not wait for nothing.
            let opened = carrier.channel.eventLoop.makePromise(of: (any Channel).self)
            carrier.channel.closeFuture.whenComplete { _ in opened.fail(CarrierClosed()) }
            carrier.multiplexer.createStreamChannel { stream in
                stream.eventLoop.makeCompletedFuture {
                    try stream.syncOptions?.setOption(.autoRead, value: false)
                    try stream.pipeline.syncOperations.addHandler(MuxStreamHandler(opening: .request(destination)))
                }
            }.cascade(to: opened)
            return opened.futureResult
        }.map { stream in
            stream.closeFuture.whenComplete { _ in self.streamEnded(on: id) }
            return stream
        }.flatMapErrorThrowing { error in
            self.streamEnded(on: id)
            throw error
        }
    }

    /// Puts HTTP/2 and the keepalive on a freshly dialed carrier (its filters' handlers already in place).
    private func setUp(carrier: any Channel, id: Int) throws -> OpenCarrier {
        let operations = carrier.pipeline.syncOperations
        let multiplexer = try operations.configureHTTP2Pipeline(
            mode: .client, connectionConfiguration: MuxSettings.connection(config), streamConfiguration: MuxSettings.stream(config)
        ) { stream in
            // The server never opens streams of its own.
            stream.close()
        }
        try operations.addHandlers([
            MuxKeepalive(interval: TimeAmount(config.keepalive)) { [weak self] in self?.state.withLockedValue { $0.book.drain(id) } },
            TransformMuxConfig.failureLabel(metrics),
        ])
        try carrier.syncOptions?.setOption(.autoRead, value: true)
        carrier.closeFuture.whenComplete { _ in self.forget(id) }
        return OpenCarrier(channel: carrier, multiplexer: multiplexer)
    }

    private func forget(_ id: Int) {
        state.withLockedValue { state in
            state.opened[id] = nil
            state.book.remove(id)
        }
    }

    /// A stream ended: an idle carrier is closed after `idle_timeout` unless a stream came in the meantime.
    private func streamEnded(on id: Int) {
        let carrier = state.withLockedValue { state in
            state.book.release(id, at: .now())
            return state.opened[id]
        }
        guard let carrier else { return }
        let timeout = TimeAmount(config.idleTimeout)
        carrier.eventLoop.scheduleTask(in: timeout) {
            guard self.state.withLockedValue({ $0.book.isIdle(id, at: .now(), timeout: timeout) }) else { return }
            self.forget(id)
            carrier.whenSuccess { $0.channel.close(promise: nil) }
        }
    }
}

struct CarrierClosed: Error, CustomStringConvertible {
    var description: String { "the carrier to the next agent closed" }
}
