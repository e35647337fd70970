import Foundation
import SQLKit
import WeirCore
import WeirVPN

/// VPN servers, plans, users and devices. Private keys are sealed before they are stored; device addresses
/// are also rows of `vpn_addresses`, whose key (server, address) makes the database refuse a second device
/// on one address, even when two coordinator instances allocate at once.
extension CoordinatorStore {
    // MARK: - Servers

    func vpnServers() async throws -> [VPNServer] {
        try await sql.raw("SELECT spec FROM vpn_servers ORDER BY name").all().map(openServer)
    }

    func vpnServer(name: String) async throws -> VPNServer? {
        try await sql.raw("SELECT spec FROM vpn_servers WHERE name = \(bind: name)").first().map(openServer)
    }

    /// Creates or replaces; returns whether it existed.
    func putVPNServer(_ server: VPNServer) async throws -> Bool {
        var stored = server
        stored.privateKey = try secrets.seal(server.privateKey, for: "vpn-server/\(server.name)")
        let existed = try await vpnServer(name: server.name) != nil
        try await sql.raw("""
            INSERT INTO vpn_servers (name, spec, created_at) VALUES (\(bind: server.name), \(bind: try JSONText.encode(stored)), \(bind: server.createdAt))
            ON CONFLICT (name) DO UPDATE SET spec = excluded.spec
            """).run()
        return existed
    }

    func deleteVPNServer(name: String) async throws -> Bool {
        guard try await vpnServer(name: name) != nil else { return false }
        try await sql.raw("DELETE FROM vpn_servers WHERE name = \(bind: name)").run()
        return true
    }

    private func openServer(_ row: any SQLRow) throws -> VPNServer {
        var server = try JSONText.decode(VPNServer.self, try row.decode(column: "spec", as: String.self))
        server.privateKey = try secrets.open(server.privateKey, for: "vpn-server/\(server.name)")
        return server
    }

    // MARK: - Plans

    func vpnPlans() async throws -> [VPNPlan] {
        try await sql.raw("SELECT spec FROM vpn_plans ORDER BY name").all().map { try JSONText.decode(VPNPlan.self, try $0.decode(column: "spec", as: String.self)) }
    }

    func putVPNPlan(_ plan: VPNPlan) async throws -> Bool {
        let existed = try await vpnPlans().contains { $0.name == plan.name }
        try await sql.raw("""
            INSERT INTO vpn_plans (name, spec) VALUES (\(bind: plan.name), \(bind: try JSONText.encode(plan)))
            ON CONFLICT (name) DO UPDATE SET spec = excluded.spec
            """).run()
        return existed
    }

    func deleteVPNPlan(name: String) async throws -> Bool {
        guard try await vpnPlans().contains(where: { $0.name == name }) else { return false }
        try await sql.raw("DELETE FROM vpn_plans WHERE name = \(bind: name)").run()
        return true
    }

    // MARK: - Users

    func vpnUsers() async throws -> [VPNUser] {
        try await sql.raw("SELECT spec FROM vpn_users ORDER BY name").all().map { try JSONText.decode(VPNUser.self, try $0.decode(column: "spec", as: String.self)) }
    }

    func vpnUser(name: String) async throws -> VPNUser? {
        try await sql.raw("SELECT spec FROM vpn_users WHERE name = \(bind: name)").first()
            .map { try JSONText.decode(VPNUser.self, try $0.decode(column: "spec", as: String.self)) }
    }

    func putVPNUser(_ user: VPNUser) async throws -> Bool {
        let existed = try await vpnUser(name: user.name) != nil
        try await sql.raw("""
            INSERT INTO vpn_users (name, spec) VALUES (\(bind: user.name), \(bind: try JSONText.encode(user)))
            ON CONFLICT (name) DO UPDATE SET spec = excluded.spec
            """).run()
        return existed
    }

    /// Removes the user, their devices and the devices' addresses.
    func deleteVPNUser(name: String) async throws -> Bool {
        guard try await vpnUser(name: name) != nil else { return false }
        try await sql.raw("DELETE FROM vpn_addresses WHERE vpn_user = \(bind: name)").run()
        try await sql.raw("DELETE FROM vpn_devices WHERE vpn_user = \(bind: name)").run()
        try await sql.raw("DELETE FROM vpn_users WHERE name = \(bind: name)").run()
        return true
    }

    // MARK: - Devices

    /// Every device, or a user's, or a server's.
    func vpnDevices(user: String? = nil, server: String? = nil) async throws -> [VPNDevice] {
        let rows: [any SQLRow]
        if let user {
            rows = try await sql.raw("SELECT spec FROM vpn_devices WHERE vpn_user = \(bind: user) ORDER BY name").all()
        } else if let server {
            rows = try await sql.raw("SELECT spec FROM vpn_devices WHERE server = \(bind: server) ORDER BY vpn_user, name").all()
        } else {
            rows = try await sql.raw("SELECT spec FROM vpn_devices ORDER BY vpn_user, name").all()
        }
        return try rows.map(openDevice)
    }

    func vpnDevice(user: String, name: String) async throws -> VPNDevice? {
        try await sql.raw("SELECT spec FROM vpn_devices WHERE vpn_user = \(bind: user) AND name = \(bind: name)").first().map(openDevice)
    }

    enum DeviceCreation {
        case created(VPNDevice)
        case exists
        case poolExhausted(String)
    }

    /// Allocates one address per pool network of the server (lowest free), generates the key pair unless
    /// the owner brought a public key, and stores the device.
    func createVPNDevice(user: String, name: String, server: VPNServer, publicKey: String?) async throws -> DeviceCreation {
        guard try await vpnDevice(user: user, name: name) == nil else { return .exists }
        var addresses: [IPNetwork] = []
        for network in server.poolNetworks {
            // A lost race for an address (another instance took it) moves on to the next free one.
            var claimed: IPNetwork?
            for _ in 0..<8 where claimed == nil {
                let taken = Set(try await sql.raw("SELECT address FROM vpn_addresses WHERE server = \(bind: server.name)").all()
                    .compactMap { try? IPNetwork.parse(try $0.decode(column: "address", as: String.self)) })
                    .union(server.ownAddresses)
                guard let next = AddressPool.nextFree(in: network, taken: taken) else {
                    try await releaseAddresses(server: server.name, addresses)
                    return .poolExhausted(network.description)
                }
                let inserted = try await sql.raw("""
                    INSERT INTO vpn_addresses (server, address, vpn_user, device) VALUES (\(bind: server.name), \(bind: next.description), \(bind: user), \(bind: name))
                    ON CONFLICT (server, address) DO NOTHING RETURNING address
                    """).all()
                if !inserted.isEmpty { claimed = next }
            }
            guard let claimed else {
                try await releaseAddresses(server: server.name, addresses)
                throw SecretBox.Failure(description: "could not claim an address of \(network) after 8 attempts")
            }
            addresses.append(claimed)
        }
        var privateKey: String?
        var key = publicKey
        if key == nil {
            let generated = WireGuardKey.generatePrivate()
            privateKey = generated.base64
            key = generated.publicKey.base64
        }
        let device = VPNDevice(
            user: user, name: name, server: server.name, addresses: addresses.map(\.description), publicKey: key ?? "", privateKey: privateKey,
            createdAt: Date().timeIntervalSince1970)
        var stored = device
        stored.privateKey = try privateKey.map { try secrets.seal($0, for: device.sealOwner) }
        do {
            try await sql.raw("""
                INSERT INTO vpn_devices (vpn_user, name, server, spec, created_at)
                VALUES (\(bind: user), \(bind: name), \(bind: server.name), \(bind: try JSONText.encode(stored)), \(bind: device.createdAt))
                """).run()
        } catch {
            // The same device created at once by another request: its addresses are not this one's to keep.
            try? await releaseAddresses(server: server.name, addresses)
            if try await vpnDevice(user: user, name: name) != nil { return .exists }
            throw error
        }
        return .created(device)
    }

    func deleteVPNDevice(user: String, name: String) async throws -> Bool {
        guard let device = try await vpnDevice(user: user, name: name) else { return false }
        try await releaseAddresses(server: device.server, device.addresses.compactMap { try? IPNetwork.parse($0) })
        try await sql.raw("DELETE FROM vpn_devices WHERE vpn_user = \(bind: user) AND name = \(bind: name)").run()
        return true
    }

    /// Exactly these addresses: a device created at once under the same name by another request holds others.
    private func releaseAddresses(server: String, _ addresses: [IPNetwork]) async throws {
        for address in addresses {
            try await sql.raw("DELETE FROM vpn_addresses WHERE server = \(bind: server) AND address = \(bind: address.description)").run()
        }
    }

    private func openDevice(_ row: any SQLRow) throws -> VPNDevice {
        var device = try JSONText.decode(VPNDevice.self, try row.decode(column: "spec", as: String.self))
        if let sealed = device.privateKey { device.privateKey = try secrets.open(sealed, for: device.sealOwner) }
        return device
    }

    // MARK: - Rendering

    /// Every server's document and assignment, for the desired state.
    func renderedVPNServers() async throws -> [(document: PipelineDocument, assignment: Assignment)] {
        let servers = try await vpnServers()
        guard !servers.isEmpty else { return [] }
        let rendering = VPNRendering(users: try await vpnUsers(), plans: try await vpnPlans())
        let devices = Dictionary(grouping: try await vpnDevices(), by: \.server)
        return servers.map { rendering.rendered($0, devices: devices[$0.name] ?? []) }
    }

    /// Proves every sealed VPN key opens with this instance's key (see `sealStoredSecrets`).
    func checkVPNSecrets() async throws {
        _ = try await vpnServers()
        _ = try await vpnDevices()
    }
}
