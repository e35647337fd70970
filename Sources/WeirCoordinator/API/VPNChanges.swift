import Foundation
import WeirCore
import WeirVPN

/// The VPN changes the REST API and the web console both make — servers, plans, users, devices — written
/// once. Every change renders the servers' documents again through the agent's validator before anything is
/// stored, reaches their agents in the next bundle, and leaves a note for the audit trail (no key in it).
extension CoordinatorAPI {
    // MARK: - Servers

    /// Creates or replaces a server (keeping an existing one's key); true when it was created.
    func putVPNServer(name: String, _ body: VPNServerRequest) async throws -> (VPNServer, created: Bool) {
        guard VPNNames.isValidServer(name) else { throw APIError.badRequest("a VPN server name is 1-58 letters, digits, '-' or '_'") }
        let existing = try await store.vpnServer(name: name)
        let server = try body.server(name: name, existing: existing)
        let devices = try await store.vpnDevices(server: name)
        let pool = server.poolNetworks
        for device in devices {
            for address in device.addresses.compactMap({ try? IPNetwork.parse($0) }) where !pool.contains(where: { $0.contains(address) }) {
                throw APIError(status: .conflict, message: "device \(device.peerName) has \(address), which the new pool does not hold; remove it first")
            }
        }
        try await validateRendering(server, devices: devices)
        let existed = try await store.putVPNServer(server)
        let on = server.agent.map { "agent \($0)" } ?? "agents with \(server.selector?.description ?? "")"
        AuditNote.set("\(existed ? "changed" : "created"): \(on), endpoint \(server.endpoint), pool \(server.pool.joined(separator: ", "))")
        await changed()
        return (server, !existed)
    }

    /// Refused while devices use it.
    func deleteVPNServer(name: String) async throws {
        guard try await store.vpnServer(name: name) != nil else { throw APIError.notFound("VPN server \"\(name)\"") }
        let devices = try await store.vpnDevices(server: name)
        guard devices.isEmpty else {
            throw APIError(
                status: .conflict,
                message: "VPN server \"\(name)\" has \(devices.count) devices (\(devices.prefix(5).map(\.peerName).joined(separator: ", "))…); remove them first")
        }
        _ = try await store.deleteVPNServer(name: name)
        await changed()
    }

    // MARK: - Plans

    func putVPNPlan(name: String, _ body: VPNPlanRequest) async throws -> (VPNPlan, created: Bool) {
        guard ConfigLoader.isValidName(name) else { throw APIError.badRequest("a plan name is 1-64 letters, digits, '-' or '_'") }
        let plan = try body.plan(name: name)
        try await validateAllServers(plans: { $0.filter { $0.name != name } + [plan] })
        let existed = try await store.putVPNPlan(plan)
        AuditNote.set("rate \(plan.rate ?? "none"), ceil \(plan.ceil ?? plan.rate ?? "none"), quota \(plan.quota ?? "none") per \(plan.period ?? "month")")
        await changed()
        return (plan, !existed)
    }

    /// Refused while users have it.
    func deleteVPNPlan(name: String) async throws {
        let users = try await store.vpnUsers().filter { $0.plan == name }
        guard users.isEmpty else {
            throw APIError(status: .conflict, message: "plan \"\(name)\" is assigned to \(users.prefix(5).map(\.name).joined(separator: ", "))")
        }
        guard try await store.deleteVPNPlan(name: name) else { throw APIError.notFound("plan \"\(name)\"") }
        await changed()
    }

    // MARK: - Users

    func putVPNUser(name: String, _ body: VPNUserRequest) async throws -> (VPNUser, created: Bool) {
        guard VPNNames.isValidUser(name) else { throw APIError.badRequest("a user name is 1-48 letters, digits, '-', '_', '.' or '@'") }
        let existing = try await store.vpnUser(name: name)
        let user = VPNUser(
            name: name, plan: body.plan, profile: body.profile ?? "full", disabled: body.disabled ?? false,
            createdAt: existing?.createdAt ?? Date().timeIntervalSince1970)
        guard VPNUser.profiles.contains(user.profile) else { throw APIError.badRequest("profile must be one of \(VPNUser.profiles.joined(separator: ", "))") }
        if let plan = user.plan, !(try await store.vpnPlans().contains { $0.name == plan }) { throw APIError.notFound("plan \"\(plan)\"") }
        try await storeVPNUser(user, before: existing)
        return (user, existing == nil)
    }

    func setVPNUser(_ name: String, disabled: Bool) async throws -> VPNUser {
        let before = try await vpnUser(name)
        var user = before
        user.disabled = disabled
        try await storeVPNUser(user, before: before)
        return user
    }

    /// Removes the user with their devices (their addresses go back to the pools).
    func deleteVPNUser(name: String) async throws {
        let devices = try await store.vpnDevices(user: name)
        guard try await store.deleteVPNUser(name: name) else { throw APIError.notFound("VPN user \"\(name)\"") }
        AuditNote.set("deleted with \(devices.count) device\(devices.count == 1 ? "" : "s")" + (devices.isEmpty ? "" : ": " + devices.map(\.name).joined(separator: ", ")))
        await changed()
    }

    private func storeVPNUser(_ user: VPNUser, before: VPNUser?) async throws {
        try await validateAllServers(users: { $0.filter { $0.name != user.name } + [user] })
        _ = try await store.putVPNUser(user)
        func text(_ user: VPNUser) -> String { "plan \(user.plan ?? "none"), profile \(user.profile), \(user.disabled ? "disabled" : "enabled")" }
        AuditNote.set(before.map { "\(text($0)) → \(text(user))" } ?? "created: \(text(user))")
        await changed()
    }

    // MARK: - Devices

    /// A device with addresses from its server's pool, and a generated key pair unless its owner brought a key.
    func createVPNDevice(user name: String, _ body: VPNDeviceRequest) async throws -> VPNDevice {
        let user = try await vpnUser(name)
        guard VPNNames.isValidDevice(body.name) else { throw APIError.badRequest("a device name is 1-15 letters, digits, '-' or '_'") }
        if let key = body.publicKey, WireGuardKey(base64: key) == nil { throw APIError.badRequest("public_key: not a WireGuard key (32 bytes, base64)") }
        let server = try await vpnServer(body.server)
        switch try await store.createVPNDevice(user: user.name, name: body.name, server: server, publicKey: body.publicKey) {
        case .exists: throw APIError(status: .conflict, message: "user \"\(user.name)\" has a device \"\(body.name)\"")
        case .poolExhausted(let network): throw APIError(status: .conflict, message: "the pool \(network) of VPN server \"\(server.name)\" is full")
        case .created(let device):
            do {
                try await validateRendering(server, devices: try await store.vpnDevices(server: server.name))
            } catch {
                _ = try await store.deleteVPNDevice(user: user.name, name: body.name)
                throw error
            }
            AuditNote.set(
                "server \(server.name), \(device.addresses.joined(separator: ", ")), "
                    + (body.publicKey == nil ? "key pair made by the coordinator" : "public key brought by its owner"))
            await changed()
            return device
        }
    }

    func deleteVPNDevice(user: String, name: String) async throws {
        let device = try await vpnDevice(user: user, name: name)
        _ = try await store.deleteVPNDevice(user: device.user, name: device.name)
        AuditNote.set("deleted: server \(device.server), \(device.addresses.joined(separator: ", ")) returned to the pool")
        await changed()
    }

    /// The device's wg-quick text. It holds the device's private key: callers let admins only.
    func clientConfiguration(user: String, device name: String) async throws -> String {
        let device = try await vpnDevice(user: user, name: name)
        guard device.privateKey != nil else {
            throw APIError(status: .conflict, message: "device \(device.peerName) brought its own key: the coordinator has no configuration with a private key to give")
        }
        let server = try await vpnServer(device.server)
        guard let file = VPNRendering.clientFile(device, server: server) else { throw APIError(status: .internalServerError, message: "the server's key is unreadable") }
        return file.text
    }

    /// Peer reports from every agent: pipeline id → peer name → (agent → report).
    func vpnPeerUsage() async throws -> [String: [String: [String: PeerUsageView]]] {
        var usage: [String: [String: [String: PeerUsageView]]] = [:]
        for agent in try await store.agents() {
            for (pipeline, report) in agent.report {
                for (peer, numbers) in report.peers ?? [:] { usage[pipeline, default: [:]][peer, default: [:]][agent.id] = PeerUsageView(numbers) }
            }
        }
        return usage
    }

    // MARK: - Lookups and checks

    func vpnServer(_ name: String) async throws -> VPNServer {
        guard let server = try await store.vpnServer(name: name) else { throw APIError.notFound("VPN server \"\(name)\"") }
        return server
    }

    func vpnUser(_ name: String) async throws -> VPNUser {
        guard let user = try await store.vpnUser(name: name) else { throw APIError.notFound("VPN user \"\(name)\"") }
        return user
    }

    func vpnDevice(user: String, name: String) async throws -> VPNDevice {
        guard let device = try await store.vpnDevice(user: user, name: name) else { throw APIError.notFound("device \"\(name)\" of VPN user \"\(user)\"") }
        return device
    }

    /// The rendered document of `server` with these devices, through the agent's validator.
    private func validateRendering(_ server: VPNServer, devices: [VPNDevice], users: [VPNUser]? = nil, plans: [VPNPlan]? = nil) async throws {
        let users = if let users { users } else { try await store.vpnUsers() }
        let plans = if let plans { plans } else { try await store.vpnPlans() }
        let rendering = VPNRendering(users: users, plans: plans)
        try validate(document: rendering.document(server, devices: devices), name: server.documentName, lists: [])
    }

    /// Every server's document as it would be with the changed users or plans.
    private func validateAllServers(
        users change: (([VPNUser]) -> [VPNUser])? = nil, plans changePlans: (([VPNPlan]) -> [VPNPlan])? = nil
    ) async throws {
        var users = try await store.vpnUsers()
        var plans = try await store.vpnPlans()
        if let change { users = change(users) }
        if let changePlans { plans = changePlans(plans) }
        let devices = Dictionary(grouping: try await store.vpnDevices(), by: \.server)
        for server in try await store.vpnServers() {
            try await validateRendering(server, devices: devices[server.name] ?? [], users: users, plans: plans)
        }
    }
}
