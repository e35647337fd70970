import NIOConcurrencyHelpers
import NIOCore

/// A bound listening socket whose owner can change.
///
/// A reload that changes a pipeline but not its listener hands the socket to the new pipeline instead of
/// closing and rebinding it, so no connection attempt is refused in between.
public final class ListenerSocket: Sendable {
    /// The listener stage's fingerprint: a socket is reused only for an identical listener.
    public let fingerprint: String
    private let owner = NIOLockedValueBox<ListenerOwner?>(nil)
    private let boundChannel = NIOLockedValueBox<(any Channel)?>(nil)
    private let dialer = NIOLockedValueBox<(any ListenerDialer)?>(nil)

    public init(fingerprint: String) { self.fingerprint = fingerprint }

    public var channel: (any Channel)? { boundChannel.withLockedValue { $0 } }

    public var currentOwner: ListenerOwner? { owner.withLockedValue { $0 } }

    /// Makes `newOwner` receive what the socket accepts from now on; returns the previous owner.
    @discardableResult
    public func setOwner(_ newOwner: ListenerOwner?) -> ListenerOwner? {
        owner.withLockedValue { current in
            defer { current = newOwner }
            return current
        }
    }

    /// Binds with `listener`, routing to whichever owner is current.
    public func bind(stream listener: any StreamListener, group: any EventLoopGroup) async throws {
        let channel = try await listener.bind(group: group) { [self] child in
            if case .stream(let forwarder) = currentOwner {
                forwarder.accept(child)
            } else {
                child.close(promise: nil)
            }
            return child.eventLoop.makeSucceededVoidFuture()
        }
        boundChannel.withLockedValue { $0 = channel }
    }

    /// Starts a listener that dials out; what it connects goes to whichever owner is current.
    public func start(dialing listener: any DialingStreamListener, group: any EventLoopGroup) {
        let dialer = listener.startDialing(group: group) { [self] connection in
            if case .stream(let forwarder) = currentOwner {
                forwarder.accept(connection)
            } else {
                connection.close(promise: nil)
            }
        }
        self.dialer.withLockedValue { $0 = dialer }
    }

    public func bind(datagram listener: any DatagramListener, group: any EventLoopGroup) async throws {
        let channel = try await listener.bind(group: group) { [self] channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(DatagramSessionHandler(socket: self))
            }
        }
        boundChannel.withLockedValue { $0 = channel }
    }

    public func close() async {
        dialer.withLockedValue { $0 }?.stop()
        guard let channel else { return }
        try? await channel.close()
    }
}

/// Who receives what a listener socket accepts.
public enum ListenerOwner: Sendable {
    case stream(StreamForwarder)
    case datagram(DatagramForwarder)
}
