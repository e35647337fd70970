import Foundation
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import ServiceLifecycle
import WeirCore
import WeirCoordinatorProtocol

/// `weir coordinator`: the registry, the desired state and its distribution, the REST API, all on one TLS port.
public struct Coordinator: Service {
    public enum StartError: Error, CustomStringConvertible {
        case invalidConfig(ConfigErrors)
        case startFailed(String)

        public var description: String {
            switch self {
            case .invalidConfig(let errors): return "invalid configuration:\n\(errors)"
            case .startFailed(let message): return message
            }
        }
    }

    let config: CoordinatorConfig
    let registry: StageRegistry
    let logger: Logger

    public init(config: CoordinatorConfig, registry: StageRegistry, logger: Logger) {
        self.config = config
        self.registry = registry
        self.logger = logger
    }

    public func run() async throws {
        // Before anything opens a socket: a descriptor per connected agent, API client and console page.
        let descriptors = DescriptorLimit.raiseSoftToHard()
        let group = MultiThreadedEventLoopGroup.singleton
        let tls: TLSConfiguration
        let chain: [NIOSSLCertificate]
        do {
            try FileManager.default.createDirectory(atPath: config.stateDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            chain = try NIOSSLCertificate.fromPEMFile(config.certificatePath)
            tls = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain.map { .certificate($0) },
                privateKey: .privateKey(try NIOSSLPrivateKey(file: config.keyPath, format: .pem)))
        } catch {
            throw StartError.startFailed("cannot load the TLS certificate or key: \(error)")
        }
        let database: CoordinatorDatabase
        do {
            database = try await CoordinatorDatabase.open(config.database, group: group, logger: logger)
            try await database.migrate()
        } catch {
            throw StartError.startFailed("database \(config.database): \(String(reflecting: error))")
        }
        let store: CoordinatorStore
        do {
            store = CoordinatorStore(database: database, secrets: try SecretBox.loadOrCreate(keyFile: config.secretsKeyFile))
            let sealed = try await store.sealStoredSecrets()
            if sealed > 0 { logger.notice("sealed secrets stored in the clear by an earlier version", metadata: ["count": "\(sealed)"]) }
        } catch {
            await database.shutdown()
            throw StartError.startFailed("secrets: \(error)")
        }
        try await bootstrapAdminToken(store)

        let metrics = CoordinatorMetrics()
        if let notAfter = chain.map({ Double($0.notValidAfter) }).min() {
            metrics.certificateExpiry(file: config.certificatePath).set(to: notAfter)
        }
        let distributor = Distributor(store: store, metrics: metrics, logger: logger)
        let changes = ChangeFeed(database: database, distributor: distributor)
        let sessions = AgentSessions(store: store, distributor: distributor, questions: AgentQuestions(), heartbeatInterval: config.heartbeatInterval, logger: logger)
        let api = CoordinatorAPI(
            store: store, registry: registry, offlineAfter: config.offlineAfter, changed: { await changes.publish() }, agentSessions: sessions,
            maxRequestBody: config.maxRequestBody)

        let console: Console
        do {
            console = try Console(
                database: database, secrets: store.secrets, api: api, settings: config.console, logger: logger, streamsGauge: metrics.consoleStreams)
            try await bootstrapConsoleAdmin(console.accounts)
        } catch {
            await database.shutdown()
            throw StartError.startFailed("console: \(error)")
        }

        let router = Router(context: CoordinatorContext.self)
        router.add(middleware: SecurityHeadersMiddleware())
        router.add(middleware: APIErrorMiddleware())
        router.add(middleware: APIAuthenticationMiddleware(store: store, audit: console.audit, openPaths: ["/api/v1/openapi.json", agentConnectPath]))
        router.add(middleware: ConsoleSessionMiddleware(console: console))
        router.get("healthz") { _, _ in "ok\n" }
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
        api.register(on: router)
        console.register(on: router)
        AuditAPI(audit: console.audit).register(on: router)
        PrometheusDiscovery(api: api).register(on: router)

        var services: [any Service] = [
            Housekeeping(store: store, consoleStore: console.accounts, distributor: distributor, metrics: metrics, config: config, logger: logger)
        ]
        if case .postgres(let url) = config.database {
            services.append(PostgresChangeListener(url: url, distributor: distributor, logger: logger))
        }
        let address = config.listen
        let log = logger
        // Every connection's opening (TLS handshake and first request head) is bounded by handshake_timeout, and
        // a keep-alive connection between requests by idle_timeout: a client cannot hold a descriptor by
        // connecting and saying nothing, or half of it.
        let http = HTTP1WebSocketUpgradeChannel.Configuration(
            http1: .init(additionalChannelHandlers: [OpeningCompleted()], idleTimeout: TimeAmount(config.idleTimeout)),
            ws: .init(maxFrameSize: AgentSessions.maxMessageSize, autoPing: .disabled))
        let shouldUpgrade: @Sendable (HTTPRequest, any Channel, Logger) async throws -> ShouldUpgradeResult<
            WebSocketDataHandler<HTTP1WebSocketUpgradeChannel.Context>
        > = { request, channel, _ in
            OpeningDeadline.passed(on: channel)
            guard request.path == agentConnectPath else { return .dontUpgrade }
            let identity: AgentIdentity
            do {
                identity = try await sessions.identify(request.headerFields)
            } catch {
                let refusal = error as? AgentRefusal
                    ?? AgentRefusal(status: .serviceUnavailable, message: "the coordinator cannot check credentials now; try again")
                log.notice("agent connection refused", metadata: [
                    "agent": "\(request.headerFields[AgentSessions.agentIDHeader] ?? "?")", "status": "\(refusal.status.code)",
                    "reason": "\(refusal.message)", "error": "\(error is AgentRefusal ? "" : "\(error)")",
                ])
                await UpgradeRefusal.send(refusal, on: channel)
                return .dontUpgrade
            }
            let peer = channel.remoteAddress?.ipAddress
            return .upgrade([:]) { inbound, outbound, _ in
                try await sessions.serve(identity, peer: peer, inbound: inbound, outbound: outbound)
            }
        }
        let handshakeTimeout = TimeAmount(config.handshakeTimeout)
        let maxConnections = config.connectionLimit(descriptors: Int(clamping: descriptors.soft))
        let app = Application(
            router: router,
            server: HTTPServerBuilder { responder in
                DeadlinedChannel(
                    base: try TLSChannel(HTTP1WebSocketUpgradeChannel(responder: responder, configuration: http, shouldUpgrade: shouldUpgrade), tlsConfiguration: tls),
                    handshakeTimeout: handshakeTimeout, metrics: metrics)
            },
            // A fleet reconnects at once after a restart: a backlog of thousands, not Hummingbird's 256. At
            // max_connections the server stops accepting until one closes (new clients wait in the backlog).
            configuration: .init(
                address: .hostname(address.host, port: address.port), serverName: nil, backlog: 4096,
                availableConnectionsDelegate: MaximumAvailableConnections(maxConnections, logger: logger)),
            services: services,
            onServerRunning: { channel in
                log.info("coordinator listening", metadata: [
                    "address": "\(channel.localAddress.map { "\($0)" } ?? "\(address)")", "max_descriptors": "\(descriptors.soft)", "max_connections": "\(maxConnections)",
                ])
            },
            eventLoopGroupProvider: .shared(group),
            logger: logger)
        do {
            try await app.runService()
        } catch {
            await database.shutdown()
            throw error
        }
        await database.shutdown()
    }

    /// A new database has no API token: make an admin one and write it where the operator can read it.
    private func bootstrapAdminToken(_ store: CoordinatorStore) async throws {
        guard try await store.apiTokenCount() == 0 else { return }
        let (_, secret) = try await store.createAPIToken(name: "bootstrap-admin", role: .admin)
        let path = config.adminTokenFile
        try? FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: path, contents: Data((secret + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw StartError.startFailed("cannot write the first admin token to \(path)")
        }
        logger.notice("created the first admin API token", metadata: ["file": "\(path)"])
    }
}

extension Coordinator {
    /// A database without console accounts gets an administrator `admin` with a random password, written
    /// once to a 0600 file in the state directory (never to the log). `weir coordinator admin create` makes
    /// accounts before the first start instead.
    private func bootstrapConsoleAdmin(_ accounts: ConsoleStore) async throws {
        guard try await accounts.accountCount() == 0 else { return }
        let password = ConsolePasswords.generate()
        try await accounts.createAccount(name: "admin", role: .admin, password: password)
        let path = (config.stateDirectory as NSString).appendingPathComponent("console-admin.password")
        guard FileManager.default.createFile(atPath: path, contents: Data("admin\n\(password)\n".utf8), attributes: [.posixPermissions: 0o600]) else {
            throw StartError.startFailed("cannot write the first console password to \(path)")
        }
        logger.notice("created the first console account \"admin\"; its password is in the file", metadata: ["file": "\(path)"])
    }
}

extension Coordinator: CustomStringConvertible {
    public var description: String { "Coordinator(\(config.listen))" }
}

/// Every heartbeat interval: online/offline counts, silent connections closed, long-gone agents removed.
struct Housekeeping: Service, CustomStringConvertible {
    var description: String { "Housekeeping" }

    let store: CoordinatorStore
    let consoleStore: ConsoleStore
    let distributor: Distributor
    let metrics: CoordinatorMetrics
    let config: CoordinatorConfig
    let logger: Logger

    func run() async throws {
        try? await cancelWhenGracefulShutdown {
            while true {
                await sweep()
                try await Task.sleep(for: config.heartbeatInterval)
            }
        }
    }

    private func sweep() async {
        do {
            await distributor.closeSilent(olderThan: config.offlineAfter)
            let now = Date().timeIntervalSince1970
            try await consoleStore.removeExpiredSessions(
                idleBefore: now - config.console.sessionIdleTimeout.seconds, createdBefore: now - config.console.sessionLifetime.seconds)
            try await TrafficHistory(database: store.database).prune(now: now)
            let removed = try await store.removeAgents(lastSeenBefore: now - config.retention.seconds)
            if !removed.isEmpty { logger.notice("removed agents offline longer than the retention", metadata: ["agents": "\(removed)"]) }
            let agents = try await store.agents()
            let online = agents.filter { !$0.revoked && now - $0.lastSeen < config.offlineAfter.seconds }
            metrics.agentsOnline.set(to: Double(online.count))
            metrics.agentsOffline.set(to: Double(agents.count - online.count))
            // Online agents by how their bundle stands (an offline agent gets its bundle when it connects).
            let desired = try await store.desiredState()
            let statuses = online.map { AgentView($0, desired: desired.bundle(for: $0).version, online: true).status }
            metrics.bundlesCurrent.set(to: Double(statuses.count { $0 == "in_sync" }))
            metrics.bundlesPending.set(to: Double(statuses.count { $0 == "pending" }))
            metrics.bundlesRefused.set(to: Double(statuses.count { $0 == "refused" }))
        } catch {
            logger.warning("housekeeping failed", metadata: ["error": "\(error)"])
        }
    }
}
