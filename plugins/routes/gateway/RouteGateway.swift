import CWeirNetlink
import Foundation
import Glibc
import Logging
import NIOConcurrencyHelpers
import WeirCore

/// The running `route.gateway` stage. Its routes carry protocol 87 ("weir"), which is how it recognises them
/// in the kernel and never touches anyone else's. Stopping the agent leaves them (the host keeps its egress);
/// removing the stage removes them.
final class RouteGateway: ServiceStage {
    /// `proto 87` in `ip route` output.
    static let routeProtocol: UInt8 = 87

    private let config: RouteGatewayConfig
    private let logger: Logger
    /// Stages installing routes in each table; the last one to retire removes them.
    private static let tableUsers = SharedStateUsers()

    init(config: RouteGatewayConfig, pipeline: String) {
        self.config = config
        var logger = Logger(label: "weir.route.gateway")
        logger[metadataKey: "pipeline"] = "\(pipeline)"
        self.logger = logger
    }

    struct RouteError: Error, CustomStringConvertible {
        let description: String
    }

    func start() async throws {
        let desired = Set(config.routes)
        let existing = Set(try Self.installed().filter { $0.table == config.table })
        var added: [GatewayRoute] = []
        do {
            for route in desired.subtracting(existing).sorted(by: { $0.destination < $1.destination }) {
                try Self.change(route, add: true)
                added.append(route)
            }
        } catch {
            // All or nothing: take back what this attempt added.
            for route in added { try? Self.change(route, add: false) }
            throw error
        }
        for stale in existing.subtracting(desired) { try? Self.change(stale, add: false) }
        Self.tableUsers.add(self, "\(config.table)")
        logger.info("routes installed", metadata: ["routes": "\(desired.count)", "added": "\(added.count)", "table": "\(config.table)"])
    }

    func stop() async {}

    /// The kernel drops routes whose gateway becomes unreachable (its interface deleted or its address
    /// removed) and never puts them back; they are installed again once the gateway is reachable.
    func reconcile() async -> ReconcileReport {
        let installed: Set<GatewayRoute>
        do { installed = Set(try Self.installed().filter { $0.table == config.table }) } catch {
            return ReconcileReport(problems: ["cannot read the routes of table \(config.table): \(error)"])
        }
        let missing = Set(config.routes).subtracting(installed).sorted { $0.destination < $1.destination }
        guard !missing.isEmpty else { return ReconcileReport() }
        var report = ReconcileReport()
        var added = 0
        var failures: [String: (count: Int, error: String)] = [:]  // by gateway
        for route in missing {
            do {
                try Self.change(route, add: true)
                added += 1
            } catch {
                failures[route.gateway.address, default: (0, "\(error)")].count += 1
            }
        }
        if added > 0 { report.repaired.append("\(added) missing routes installed again (table \(config.table))") }
        for (gateway, failure) in failures.sorted(by: { $0.key < $1.key }) {
            report.problems.append("\(failure.count) routes via \(gateway) are missing (table \(config.table)): \(failure.error)")
        }
        return report
    }

    func retire() async {
        guard Self.tableUsers.remove(self, "\(config.table)") else { return }
        for route in (try? Self.installed().filter { $0.table == config.table }) ?? [] {
            do { try Self.change(route, add: false) } catch { logger.error("removing a route failed", metadata: ["error": "\(error)"]) }
        }
        logger.info("routes removed", metadata: ["table": "\(config.table)"])
    }

    /// Removes the routes with Weir's protocol in every table no started stage installs routes in (all of
    /// them when none runs).
    static func removeUnusedTables() {
        for route in (try? installed()) ?? [] where !tableUsers.isUsed("\(route.table)") { try? change(route, add: false) }
    }

    static func installed() throws -> [GatewayRoute] {
        var result: [GatewayRoute] = []
        for family in [AF_INET, AF_INET6] {
            var routes: UnsafeMutablePointer<weir_route>?
            var count = 0
            if weir_route_list(UInt8(family), routeProtocol, &routes, &count) < 0 {
                throw RouteError(description: String(cString: weir_nft_last_error()))
            }
            defer { free(routes) }
            for index in 0..<count {
                var route = routes![index]
                let length = family == AF_INET ? 4 : 16
                let destination = withUnsafeBytes(of: &route.destination) { Array($0.prefix(length)) }
                let gateway = withUnsafeBytes(of: &route.gateway) { Array($0.prefix(length)) }
                result.append(GatewayRoute(
                    destination: IPNetwork(bytes: destination, prefix: Int(route.prefix_len)),
                    gateway: IPNetwork(bytes: gateway, prefix: length * 8), table: route.table))
            }
        }
        return result
    }

    static func change(_ route: GatewayRoute, add: Bool) throws {
        var message = weir_route()
        message.family = UInt8(route.destination.isIPv4 ? AF_INET : AF_INET6)
        message.prefix_len = UInt8(route.destination.prefix)
        withUnsafeMutableBytes(of: &message.destination) { $0.copyBytes(from: route.destination.bytes) }
        withUnsafeMutableBytes(of: &message.gateway) { $0.copyBytes(from: route.gateway.bytes) }
        message.table = route.table
        message.protocol = routeProtocol
        let result = add ? weir_route_add(&message) : weir_route_delete(&message)
        if result < 0 { throw RouteError(description: String(cString: weir_nft_last_error())) }
    }
}
