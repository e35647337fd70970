import NIOCore

/// Which end of a multiplexed carrier a stage is.
public enum MultiplexingSide: Sendable {
    /// Client connections become streams of a carrier this agent dials.
    case client
    /// Streams of carriers this agent accepted become connections.
    case server
}

/// A filter that carries many connections over one long-lived connection to the next agent (the carrier).
///
/// It splits the pipeline's filters. On the client side, filters listed before it act on each client
/// connection (their target side on its stream), filters after it once on the carrier (a TLS session, a
/// WebSocket). On the server side the carrier's filters come first and those after it act on each stream.
public protocol StreamMultiplexingFilter: StreamFilter {
    var multiplexingSide: MultiplexingSide { get }

    /// Client side: a stream for one client connection (autoRead off), on a carrier with room for it; `dial`
    /// opens a new carrier, with the carrier's filters in place, on the given loop. The stream runs on its
    /// carrier's loop, which need not be the client's.
    func openStream(
        for connection: ConnectionInfo, dial: @escaping @Sendable (any EventLoop) -> EventLoopFuture<any Channel>
    ) -> EventLoopFuture<any Channel>

    /// Server side: serves an accepted carrier (its filters' handlers in place, autoRead off). Each stream
    /// the peer opens goes to `accept` (autoRead off) with the destination the peer named for it, if any.
    func serve(carrier: any Channel, accept: @escaping @Sendable (_ stream: any Channel, _ destination: Destination?) -> Void) throws
}

/// An outbound user event: a protocol on a connection to the next agent measured the round trip to it (an
/// HTTP/2 PING answered). The connector that dialed the connection, at the head of its pipeline, records it.
public struct MeasuredRoundTrip: Sendable {
    public let seconds: Double
    public init(seconds: Double) { self.seconds = seconds }
}

/// An outbound user event the forwarder sends once it switched autoRead on: channels that do not start
/// reading by themselves then (an HTTP/2 stream's handler) start now. Sockets ignore it.
public struct StartReading: Sendable {
    public init() {}
}
