import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import WeirCore

/// `connect.udp`: opens a connected UDP socket per client session towards the first target that is up.
public struct ConnectUDPConfig: StageConfig {
    public static let type = "connect.udp"
    public static let summary = "Send each UDP client's datagrams to a target through its own socket, with an idle timeout."
    public static let role = StageRole.connector(.datagram)
    public static let options = [
        OptionDoc("addresses", "list of host:port", "Targets in order; a target that answers ICMP unreachable is skipped for a while (required)."),
        OptionDoc("idle_timeout", "duration", default: "60s", "A session with no datagram either way for this long is closed."),
        OptionDoc("max_sessions", "integer", default: "65536", "Sessions open at once; datagrams from further clients are dropped."),
    ]
    public static var sample: String { String(decoding: PackageResources.connect_udp_sample_yaml, as: UTF8.self) }

    public let addresses: [HostPort]
    public let idleTimeout: Duration
    public let maxSessions: Int

    public static func decode(_ options: ConfigMapping) -> ConnectUDPConfig? {
        let addresses = options.required("addresses").flatMap { $0.hostPorts() }
        let idle = options.optional("idle_timeout", default: Duration.seconds(60)) { $0.parsed(DurationParser.parse) }
        let maxSessions = options.optional("max_sessions", default: 65536) { $0.int(in: 1...10_000_000) }
        guard let addresses, let idle, let maxSessions else { return nil }
        if idle <= .zero {
            options.optional("idle_timeout")?.error("must be longer than 0s")
            return nil
        }
        return ConnectUDPConfig(addresses: addresses, idleTimeout: idle, maxSessions: maxSessions)
    }

    public func makeStage(_ context: StageContext) -> any Stage { ConnectUDP(config: self) }
}

final class ConnectUDP: DatagramConnector {
    /// How long a target that answered ICMP unreachable is passed over.
    static let downInterval = TimeAmount.seconds(10)

    let config: ConnectUDPConfig
    private let downUntil = NIOLockedValueBox<[SocketAddress: NIODeadline]>([:])
    /// Every target, when all are IP literals (parsed once here): a session's target is then chosen at once.
    private let literals: [SocketAddress]?
    private let lookups = SharedLookups { host, port, eventLoop in
        Resolver.resolveAll(host: host, port: port, datagram: true, on: eventLoop)
    }

    init(config: ConnectUDPConfig) {
        self.config = config
        let parsed = config.addresses.compactMap { try? SocketAddress(ipAddress: $0.host, port: $0.port) }
        literals = parsed.count == config.addresses.count ? parsed : nil
    }

    var idleTimeout: TimeAmount { TimeAmount(config.idleTimeout) }
    var maxSessions: Int { config.maxSessions }

    func targetUnreachable(_ address: SocketAddress) {
        downUntil.withLockedValue { $0[address] = .now() + Self.downInterval }
    }

    /// IP literals at once; names resolved off the relay's thread (getaddrinfo blocks), each answer shared by
    /// the sessions of the next few seconds (a burst of new clients makes one lookup), so a changed record is
    /// followed within seconds.
    func target(for connection: ConnectionInfo) -> DatagramTargetChoice {
        if let literals { return .now(choose(literals)) }
        let eventLoop = connection.eventLoop
        let resolved = config.addresses.map {
            lookups.addresses(host: $0.host, port: $0.port, on: eventLoop).map { Optional($0) }.recover { _ in nil }
        }
        return .later(EventLoopFuture.whenAllSucceed(resolved, on: eventLoop).flatMapThrowing { lists in
            let candidates = lists.compactMap { $0 }.flatMap { $0 }
            guard !candidates.isEmpty else { throw ResolutionError(host: "\(self.config.addresses)", reason: "no target resolved") }
            return self.choose(candidates)
        })
    }

    /// The first target not known to be down; when all are down, the first one (it may be back).
    private func choose(_ candidates: [SocketAddress]) -> SocketAddress {
        let now = NIODeadline.now()
        return downUntil.withLockedValue { down in candidates.first { (down[$0] ?? .distantPast) <= now } } ?? candidates[0]
    }
}
