import CWeirNetlink
import Foundation
import Glibc
import Logging

/// Interfaces and addresses coming and going, from rtnetlink notifications: the agent re-checks its service
/// stages when they do (an interface deleted and created again has lost its qdiscs, filters and routes).
///
/// The socket is read on a thread of its own with `poll()` (any descriptor number is fine), with a short
/// timeout so that ending the stream ends the thread.
enum LinkWatch {
    enum Change: Sendable, CustomStringConvertible {
        case linkAdded(name: String, index: Int32, up: Bool)
        case linkRemoved(name: String, index: Int32)
        case addressesChanged(index: Int32)
        /// Notifications were lost: anything may have changed.
        case overflow

        var description: String {
            switch self {
            case .linkAdded(let name, let index, let up): "link \(name) (\(index)) \(up ? "up" : "down")"
            case .linkRemoved(let name, let index): "link \(name) (\(index)) removed"
            case .addressesChanged(let index): "addresses of link \(index) changed"
            case .overflow: "link notifications lost"
            }
        }
    }

    struct OpenFailed: Error, CustomStringConvertible {
        let description: String
    }

    /// Batches of changes as they arrive. Fails when the kernel refuses the subscription.
    static func changes() throws -> AsyncStream<[Change]> {
        guard let opened = weir_link_watch_open() else { throw OpenFailed(description: String(cString: weir_nft_last_error())) }
        let watch = Socket(pointer: opened)
        let (stream, continuation) = AsyncStream.makeStream(of: [Change].self, bufferingPolicy: .bufferingNewest(64))
        let stopped = StopFlag()
        continuation.onTermination = { _ in stopped.set() }
        let thread = Thread {
            defer { weir_link_watch_close(watch.pointer) }
            let capacity = 64
            let events = UnsafeMutablePointer<weir_link_event>.allocate(capacity: capacity)
            defer { events.deallocate() }
            while !stopped.isSet {
                var count = 0
                let result = weir_link_watch_read(watch.pointer, 500, events, capacity, &count)
                var batch = (0..<count).compactMap { change(events[$0]) }
                if result < 0 || count == capacity { batch.append(.overflow) }
                if !batch.isEmpty { continuation.yield(batch) }
            }
        }
        thread.name = "weir-link-watch"
        thread.stackSize = 256 << 10
        thread.start()
        return stream
    }

    private static func change(_ event: weir_link_event) -> Change? {
        var event = event
        let name = withUnsafeBytes(of: &event.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        switch UInt32(event.kind) {
        case WEIR_LINK_ADDED.rawValue: return .linkAdded(name: name, index: event.ifindex, up: event.up != 0)
        case WEIR_LINK_REMOVED.rawValue: return .linkRemoved(name: name, index: event.ifindex)
        case WEIR_ADDRESSES_CHANGED.rawValue: return .addressesChanged(index: event.ifindex)
        default: return nil
        }
    }

    /// The C watch, used by the reading thread alone once it starts.
    private struct Socket: @unchecked Sendable {
        let pointer: OpaquePointer
    }

    private final class StopFlag: @unchecked Sendable {
        private let lock = NSLock()
        private var value = false
        var isSet: Bool { lock.withLock { value } }
        func set() { lock.withLock { value = true } }
    }
}
