import Foundation
import WeirCore
import WeirVPN

/// Renders a VPN server with its users' devices into the pipeline document its agents run, and devices into
/// their client configurations.
struct VPNRendering {
    let users: [String: VPNUser]
    let plans: [String: VPNPlan]

    init(users: [VPNUser], plans: [VPNPlan]) {
        self.users = Dictionary(users.map { ($0.name, $0) }) { $1 }
        self.plans = Dictionary(plans.map { ($0.name, $0) }) { $1 }
    }

    /// Values go in as JSON strings (valid YAML), so nothing an operator typed can change the structure.
    private static func quoted(_ text: String) -> String { YAMLText.quoted(text) }

    private static func list(_ items: [String]) -> String { "[" + items.map(quoted).joined(separator: ", ") + "]" }

    /// The devices that are peers: those of users that exist and are not disabled, in a stable order.
    func activeDevices(_ devices: [VPNDevice]) -> [VPNDevice] {
        devices.filter { users[$0.user].map { !$0.disabled } ?? false }.sorted { $0.peerName < $1.peerName }
    }

    func plan(of device: VPNDevice) -> VPNPlan? { users[device.user]?.plan.flatMap { plans[$0] } }

    func document(_ server: VPNServer, devices: [VPNDevice]) -> String {
        let active = activeDevices(devices)
        var lines = [
            "# Rendered by the coordinator from VPN server \"\(server.name)\" and its users' devices; change those, not this file.",
            "pipelines:",
            "  \(server.pipelineID):",
            "    stages:",
            "      - type: wireguard",
            "        interface: \(Self.quoted(server.interface))",
            "        listen_port: \(server.listenPort)",
            "        endpoint: \(Self.quoted(server.endpoint))",
            "        addresses: \(Self.list(server.addresses))",
            "        pool: \(Self.list(server.pool))",
            "        private_key: \(Self.quoted(server.privateKey))",
        ]
        if let mtu = server.mtu { lines.append("        mtu: \(mtu)") }
        lines.append("        peers:" + (active.isEmpty ? " []" : ""))
        for device in active {
            lines.append("          - name: \(Self.quoted(device.peerName))")
            lines.append("            public_key: \(Self.quoted(device.publicKey))")
            lines.append("            allowed_ips: \(Self.list(device.addresses))")
            if let plan = plan(of: device), let quota = plan.quota {
                lines.append("            quota: {limit: \(Self.quoted(quota)), period: \(Self.quoted(plan.period ?? "month"))}")
            }
        }

        // Access: profiles other than full, and the pool's source NAT.
        let profiles = active.compactMap { device -> (String, String)? in
            guard let profile = users[device.user]?.profile, profile != "full" else { return nil }
            return (device.peerName, profile)
        }
        let masquerade = server.masqueradeInterface.map { interface in
            server.poolNetworks.filter(\.isIPv4).map { (network: $0.description, interface: interface) }
        } ?? []
        if !profiles.isEmpty || !masquerade.isEmpty {
            lines.append("      - type: enforce.nftables")
            if !profiles.isEmpty {
                lines.append("        profiles:")
                for (peer, profile) in profiles { lines.append("          - {peer: \(Self.quoted(peer)), profile: \(Self.quoted(profile))}") }
            }
            if !masquerade.isEmpty {
                lines.append("        masquerade:")
                for entry in masquerade {
                    lines.append("          - {source: \(Self.quoted(entry.network)), out_interface: \(Self.quoted(entry.interface))}")
                }
            }
        }

        // Plans' rates: one class per device (its IPv4 and IPv6 addresses share it, named by its peer), both
        // directions, in place before its first packet; devices without a rated plan unshaped.
        let rated = active.compactMap { device -> (device: VPNDevice, plan: VPNPlan, rate: String)? in
            guard let plan = plan(of: device), let rate = plan.rate else { return nil }
            return (device, plan, rate)
        }
        if !rated.isEmpty {
            lines += [
                "      - type: shape.tc",
                "        interface: \(Self.quoted(server.interface))",
                "        direction: both",
                "        per: client_ip",
                // Clients without a rated plan: a class each, at a rate no tunnel reaches.
                "        rate: 100gbit",
                "        max_clients: \(min(16384, max(1024, active.count * 2)))",
                "        client_rates:",
            ]
            for entry in rated {
                let ceil = entry.plan.ceil ?? entry.rate
                let device = entry.device
                lines.append(
                    "          - {name: \(Self.quoted(device.peerName)), clients: \(Self.list(device.addresses)), "
                        + "rate: \(Self.quoted(entry.rate)), ceil: \(Self.quoted(ceil))}")
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// The document and who gets it.
    func rendered(_ server: VPNServer, devices: [VPNDevice]) -> (document: PipelineDocument, assignment: Assignment) {
        (
            PipelineDocument(name: server.documentName, document: document(server, devices: devices), updatedAt: server.createdAt),
            Assignment(id: "vpn:\(server.name)", pipeline: server.documentName, agent: server.agent, selector: server.selector, createdAt: server.createdAt)
        )
    }

    /// The device's wg-quick file; nil when the coordinator does not have its private key.
    static func clientFile(_ device: VPNDevice, server: VPNServer) -> WireGuardClientFile? {
        guard let serverKey = WireGuardKey(base64: server.privateKey)?.publicKey else { return nil }
        return WireGuardClientFile(
            privateKey: device.privateKey, publicKey: device.publicKey, addresses: device.addresses.compactMap { try? IPNetwork.parse($0) },
            dns: server.dns, mtu: server.mtu, serverPublicKey: serverKey, endpoint: server.endpoint, allowedIPs: server.clientAllowedIPs,
            persistentKeepalive: 25)
    }
}
