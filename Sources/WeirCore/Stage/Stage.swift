import NIOCore
import NIOPosix

/// A built stage, ready to run. The data-path protocols below say what the pipeline runtime asks of it.
public protocol Stage: Sendable {}

/// Facts about one client connection or datagram session, for stages that act per connection.
public struct ConnectionInfo: Sendable {
    public let pipeline: String
    public let client: SocketAddress?
    public let local: SocketAddress?
    /// The loop the client's channel runs on; the target side usually runs on it too (a stream of a
    /// multiplexed carrier runs on the carrier's).
    public var eventLoop: any EventLoop
    /// Where the client asked to go (SOCKS5, HTTP CONNECT, a TLS server name); nil for plain listeners.
    public var destination: Destination?

    public init(
        pipeline: String, client: SocketAddress?, local: SocketAddress?, eventLoop: any EventLoop, destination: Destination? = nil
    ) {
        self.pipeline = pipeline
        self.client = client
        self.local = local
        self.eventLoop = eventLoop
        self.destination = destination
    }
}

/// Where a client asked to be connected: a name or an IP literal, and a port.
public typealias Destination = HostPort

/// Why a connection a client negotiated was not made, for its answer (a SOCKS5 reply code, an HTTP status).
public enum NegotiationFailure: Sendable, Equatable {
    /// The destination is not allowed by the listener's policy.
    case notAllowed
    /// No target answered (refused, unreachable, timed out).
    case unreachable
    /// The name did not resolve.
    case unknownHost
}

/// A stream listener whose clients name their destination before any data flows (SOCKS5, HTTP CONNECT).
public protocol NegotiatingStreamListener: StreamListener {
    func negotiation(for connection: ConnectionInfo) -> any StreamNegotiation
    /// The negotiation as a step of the opening (its `handshake_timeout`), completed when it decides.
    var opening: OpeningStep { get }
}

/// One client's negotiation, driven by the forwarder on the connection's event loop (implementations are
/// channel handlers, touched only there).
public protocol StreamNegotiation: AnyObject, Sendable {
    /// Adds the negotiation's handlers to the client channel and starts reading. Completes with an allowed
    /// destination; fails when the client broke the protocol, failed to authenticate, asked for a destination
    /// the policy refuses or went away — the negotiation has then answered it and closed the channel.
    func begin(on channel: any Channel) -> EventLoopFuture<Destination>
    /// The target is connected and the glue is in place: answer the client and remove the negotiation's
    /// handlers, so bytes the client already sent flow on to the target.
    func succeed(target: any Channel)
    /// Answers the client with the failure and closes the channel.
    func fail(_ reason: NegotiationFailure)
}

/// Accepts stream connections. `childInitializer` is the runtime's; the listener applies it to every
/// accepted channel, whose `autoRead` must be off and remote half-closure allowed.
public protocol StreamListener: Stage {
    func bind(
        group: any EventLoopGroup,
        childInitializer: @escaping @Sendable (any Channel) -> EventLoopFuture<Void>
    ) async throws -> any Channel
}

/// A stream listener that is only a listening socket (`listen.tcp`): the runtime binds it itself and accepts on
/// the relay threads, which forward plain forwards on raw sockets and hand other connections to NIO.
public protocol PlainStreamListener: StreamListener {
    var address: BindAddress { get }
    var backlog: Int { get }
}

/// A stream listener that dials out instead of binding (`listen.reverse`): it keeps connections to a peer
/// open and hands each one to `accept` as if it had been accepted (autoRead off, remote half-closure
/// allowed). Closing the returned dialer stops it from dialing again.
public protocol DialingStreamListener: Stage {
    func startDialing(group: any EventLoopGroup, accept: @escaping @Sendable (any Channel) -> Void) -> any ListenerDialer
}

/// The running side of a dialing listener.
public protocol ListenerDialer: Sendable {
    /// Stops dialing. Connections already handed over stay with the pipeline that took them.
    func stop()
}

/// A datagram listener: where its sockets bind. The runtime binds one per event loop on the address
/// (SO_REUSEPORT, so every core reads and the kernel keeps each client on one socket) and relays their sessions.
public protocol DatagramListener: Stage {
    var address: BindAddress { get }
    /// Each socket's receive buffer in bytes: what holds a burst of new clients while their sessions open.
    var receiveBuffer: Int { get }
}

/// Opens the target side of a stream connection. `bootstrap` comes from the runtime already set up
/// (options and handlers); the connector chooses where to connect, with what timeout, and how to fail over.
public protocol StreamConnector: Stage {
    func connect(_ connection: ConnectionInfo, bootstrap: ClientBootstrap) -> EventLoopFuture<any Channel>
    /// The fixed addresses this connector connects to, tried in order, when that is all it does (no names to
    /// resolve, nothing from the client): its plain forwards can then be relayed on raw sockets. nil otherwise.
    var directTargets: DirectTargets? { get }
}

extension StreamConnector {
    public var directTargets: DirectTargets? { nil }
}

/// Opens the target side of a datagram session: a connected UDP socket per client.
public protocol DatagramConnector: Stage {
    /// Sessions with no traffic for this long are closed.
    var idleTimeout: TimeAmount { get }
    /// At most this many client sessions at once; datagrams from further clients are dropped.
    var maxSessions: Int { get }
    /// Where a new session's datagrams go.
    func target(for connection: ConnectionInfo) -> DatagramTargetChoice
    /// The target at `address` answered with ICMP unreachable; prefer other addresses for a while.
    func targetUnreachable(_ address: SocketAddress)
}

/// A session's target: known at once (IP literals), or later (names, resolved off the relay's thread).
public enum DatagramTargetChoice: Sendable {
    case now(SocketAddress)
    case later(EventLoopFuture<SocketAddress>)
}

/// Paces one direction of a connection by the bytes it carries (a rate limit), without looking at them.
public protocol StreamPacer: Sendable {
    /// Takes `bytes` just read from the direction's source.
    func consume(_ bytes: Int)
    /// How long the direction waits before its next read; nil when it may read now.
    func delayBeforeRead() -> TimeAmount?
}

/// A filter that only paces bytes and never looks at or changes them: a plain forward with such filters is
/// still relayed on raw sockets (StreamRelayThread), which asks the pacers before each read, as the filter's
/// handlers would on a channel.
public protocol PacingStreamFilter: StreamFilter {
    /// One connection's pacers: for what the client sends, and for what the target sends.
    func pacers() -> (toTarget: any StreamPacer, toClient: any StreamPacer)
}

/// Handlers a filter adds to one stream connection.
public struct StreamFilterHandlers {
    /// Added to the accepted (client) channel.
    public var clientSide: [any ChannelHandler]
    /// Added to the outbound (target) channel.
    public var targetSide: [any ChannelHandler]

    public init(clientSide: [any ChannelHandler] = [], targetSide: [any ChannelHandler] = []) {
        self.clientSide = clientSide
        self.targetSide = targetSide
    }
}

/// Acts on each stream connection between listener and connector (rate limits, later transforms).
public protocol StreamFilter: Stage {
    /// Handlers added once the target is connected. Client-side handlers go onto the accepted channel in the
    /// order the filters are listed (the first nearest the client's socket); target-side handlers onto the
    /// target channel in reverse order (the last listed nearest the target's socket), so a list reads in the
    /// direction data flows from client to target. Called on the connection's event loop.
    func handlers(for connection: ConnectionInfo) -> StreamFilterHandlers

    /// Handlers for the accepted channel from the moment it is accepted, before the listener's negotiation: a
    /// transform that decodes what the client sends from its first byte (TLS, a decrypting stream).
    func acceptHandlers(for connection: ConnectionInfo) -> [any ChannelHandler]

    /// A negotiation that reads the destination from the decoded stream (the address header of an encrypted
    /// stream), used when the listener's clients do not name one. It sits right behind this filter's accept
    /// handlers; accept handlers of filters listed later come after it and see only what follows the header.
    func negotiation(for connection: ConnectionInfo) -> (any StreamNegotiation)?

    /// What the client must complete on the accept side before data flows (a TLS handshake, a WebSocket
    /// upgrade, an address header) and how long it may take; nil when there is nothing.
    var acceptOpening: OpeningStep? { get }
}

extension StreamFilter {
    public func acceptHandlers(for connection: ConnectionInfo) -> [any ChannelHandler] { [] }
    public func negotiation(for connection: ConnectionInfo) -> (any StreamNegotiation)? { nil }
    public var acceptOpening: OpeningStep? { nil }
}

/// Acts on each datagram session between listener and connector.
public protocol DatagramFilter: Stage {
    /// Called on the session's event loop when a client's first datagram arrives.
    func sessionFilter(for connection: ConnectionInfo) -> any DatagramSessionFilter
}

/// Decides, datagram by datagram, what passes one session.
public protocol DatagramSessionFilter: AnyObject {
    /// Whether to pass a datagram of `bytes` in `direction`; false drops it.
    func admit(bytes: Int, direction: TrafficDirection) -> Bool
}

/// A stage that works beside the data path — kernel counters, firewall rules, shapers — rather than on each
/// connection. The supervisor starts it with its pipeline and stops it with it; like every stage, building
/// it acquired nothing.
public protocol ServiceStage: Stage {
    /// Acquires and installs what the stage needs. Called again after `stop` when a failed reload puts the
    /// previous configuration back.
    func start() async throws
    /// Removes what `start` installed, keeping state meant to outlive the process (pinned maps), so a restart
    /// continues where this one stopped. Safe to call when not started.
    func stop() async
    /// The stage left the configuration: removes that persistent state too. Called after `stop`.
    func retire() async

    /// Why the stage must not leave the configuration yet (protected state the operator has to release
    /// first), or nil. A reload that would remove it fails with this message and changes nothing.
    func retirementRefusal() -> String?

    /// Compares what `start` installed with the kernel now and puts back what went missing — an interface
    /// deleted and created again loses its qdiscs, filters and routes. Level-triggered and idempotent: the
    /// supervisor calls it after interfaces or addresses change, after every reload and periodically, on a
    /// started stage only, never at the same time as `start`, `stop` or another `reconcile`.
    func reconcile() async -> ReconcileReport

    /// How often the stage wants `reconcile` at least (the agent reconciles every stage at the shortest
    /// interval any running stage asks for, and every 30 s otherwise); nil for no wish of its own.
    var reconcileInterval: Duration? { get }
}

extension ServiceStage {
    public func retirementRefusal() -> String? { nil }
    public func reconcile() async -> ReconcileReport { ReconcileReport() }
    public var reconcileInterval: Duration? { nil }
}

/// What one `reconcile` found.
public struct ReconcileReport: Sendable, Equatable {
    /// What the stage put back, e.g. "re-attached to eth1" (logged).
    public var repaired: [String]
    /// What keeps the stage from being in force, e.g. "interface eth1 is missing". Reported in `/healthz`,
    /// `weir_stage_healthy` and the log until a later reconcile finds it resolved.
    public var problems: [String]

    public init(repaired: [String] = [], problems: [String] = []) {
        self.repaired = repaired
        self.problems = problems
    }

    /// The problem of an interface the stage acts on that does not exist (now).
    public static func missingInterface(_ name: String) -> String { "interface \(name) is missing" }
}

/// `in` is client to target, `out` is target to client — the labels of `weir_pipeline_bytes_total`.
public enum TrafficDirection: String, Sendable, CaseIterable {
    case `in`
    case out
}
