import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import WeirCore

/// `connect.tcp`: connects each client connection to the first target that answers.
public struct ConnectTCPConfig: StageConfig {
    public static let type = "connect.tcp"
    public static let summary = "Connect to a TCP target, failing over through a list of addresses; names race all their addresses."
    public static let role = StageRole.connector(.stream)
    public static let options = [
        OptionDoc(
            "addresses", "list of host:port", default: "the client's destination",
            "Targets tried in order; the next is used when one is down. Required unless the listener's clients name their destination (SOCKS5, HTTP CONNECT); when given, it wins over theirs."),
        OptionDoc("connect_timeout", "duration", default: "3s", "Time allowed for each target."),
    ]
    public static var sample: String { String(decoding: PackageResources.connect_tcp_sample_yaml, as: UTF8.self) }

    public let addresses: [HostPort]
    public let connectTimeout: Duration

    public static func decode(_ options: ConfigMapping) -> ConnectTCPConfig? {
        let addresses = options.optional("addresses", default: [HostPort]()) { $0.hostPorts() }
        let timeout = options.optional("connect_timeout", default: Duration.seconds(3)) { $0.parsed(DurationParser.parse) }
        guard let addresses, let timeout else { return nil }
        return ConnectTCPConfig(addresses: addresses, connectTimeout: timeout)
    }

    /// Without addresses it connects where each client asked.
    public var needsDestination: Bool { addresses.isEmpty }

    public func makeStage(_ context: StageContext) -> any Stage { ConnectTCP(config: self) }
}

struct ConnectTCP: StreamConnector {
    let config: ConnectTCPConfig
    /// IP literals are parsed once here; names go through NIO's happy-eyeballs connector on every connect.
    private let literals: [SocketAddress?]

    init(config: ConnectTCPConfig) {
        self.config = config
        self.literals = config.addresses.map { try? SocketAddress(ipAddress: $0.host, port: $0.port) }
        let literals = literals.compactMap { $0 }
        directTargets = literals.isEmpty || literals.count < config.addresses.count
            ? nil : DirectTargets(addresses: literals, connectTimeout: config.connectTimeout)
    }

    /// Targets that are all IP literals: plain forwards to them can be relayed on raw sockets.
    let directTargets: DirectTargets?

    func connect(_ connection: ConnectionInfo, bootstrap: ClientBootstrap) -> EventLoopFuture<any Channel> {
        let bootstrap = bootstrap.connectTimeout(TimeAmount(config.connectTimeout))
        if config.addresses.isEmpty {
            guard let destination = connection.destination else {
                return connection.eventLoop.makeFailedFuture(AllTargetsFailed(errors: ["no target and no destination from the client"]))
            }
            return connectDestination(destination, bootstrap: bootstrap)
        }
        return attempt(0, bootstrap: bootstrap, errors: [])
    }

    /// The client's destination: an IP literal directly, a name through NIO's happy-eyeballs resolver (a name
    /// that does not resolve fails with NameNotResolved, answered as "host unreachable").
    private func connectDestination(_ destination: Destination, bootstrap: ClientBootstrap) -> EventLoopFuture<any Channel> {
        if let literal = try? SocketAddress(ipAddress: destination.host, port: destination.port) {
            return bootstrap.connect(to: literal)
        }
        return bootstrap.connect(host: destination.host, port: destination.port).flatMapErrorThrowing { error in
            // No address to try at all: the lookups failed, nothing was refused.
            if let failed = error as? NIOConnectionError, failed.connectionErrors.isEmpty,
                failed.dnsAError != nil || failed.dnsAAAAError != nil
            {
                throw NameNotResolved(name: destination.host)
            }
            throw error
        }
    }

    /// Tries target `index`, then the ones after it.
    private func attempt(_ index: Int, bootstrap: ClientBootstrap, errors: [String]) -> EventLoopFuture<any Channel> {
        let target = config.addresses[index]
        let future = bootstrap.connect(to: target, literal: literals[index])
        // Runs on the client's event loop (the bootstrap's group), where the bootstrap may be reused.
        return future.assumeIsolated().flatMapError { error in
            let errors = errors + ["\(target): \(error)"]
            guard index + 1 < config.addresses.count else {
                return future.eventLoop.makeFailedFuture(AllTargetsFailed(errors: errors))
            }
            return attempt(index + 1, bootstrap: bootstrap, errors: errors)
        }.nonisolated()
    }
}

struct AllTargetsFailed: Error, CustomStringConvertible {
    let errors: [String]
    var description: String { "no target answered (\(errors.joined(separator: "; ")))" }
}
