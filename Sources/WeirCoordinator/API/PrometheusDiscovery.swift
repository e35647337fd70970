import Foundation
import Hummingbird

/// `GET /api/v1/prometheus/targets`: Prometheus HTTP service discovery (`http_sd_configs`) for the agents'
/// metrics endpoints, so Prometheus follows the fleet without hand-written target lists. Any API token may
/// read it (a viewer token is enough). Revoked agents and agents that announced no metrics address are left
/// out; offline agents stay in, so Prometheus sees them down (`up == 0`) rather than gone.
///
/// Each target group carries `agent` as a target label, and for relabelling: `__meta_weir_agent`,
/// `__meta_weir_online`, `__meta_weir_version`, and every agent label as `__meta_weir_label_<name>` (the name
/// with characters Prometheus does not allow replaced by `_`).
struct PrometheusDiscovery {
    let api: CoordinatorAPI

    struct TargetGroup: Encodable, Equatable {
        let targets: [String]
        let labels: [String: String]
    }

    func register(on router: Router<CoordinatorContext>) {
        router.get("api/v1/prometheus/targets") { _, _ in JSONResponse.make(try await targetGroups()) }
    }

    func targetGroups() async throws -> [TargetGroup] {
        try await api.agentViews().compactMap { agent in
            guard !agent.revoked, let address = agent.metricsAddress else { return nil }
            return Self.group(agent: agent.id, address: address, online: agent.online, version: agent.version, labels: agent.labels)
        }
    }

    static func group(agent: String, address: String, online: Bool, version: String, labels: [String: String]) -> TargetGroup {
        var meta = ["agent": agent, "__meta_weir_agent": agent, "__meta_weir_online": online ? "true" : "false", "__meta_weir_version": version]
        for (key, value) in labels { meta["__meta_weir_label_" + labelName(key)] = value }
        return TargetGroup(targets: [address], labels: meta)
    }

    /// A Prometheus label name: [a-zA-Z0-9_], other characters as `_`.
    static func labelName(_ key: String) -> String {
        String(key.unicodeScalars.map { scalar in
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || scalar == "_") ? Character(scalar) : "_"
        })
    }
}
