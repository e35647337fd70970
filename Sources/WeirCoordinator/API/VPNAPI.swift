import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import WeirCoordinatorProtocol
import WeirCore
import WeirVPN

/// /api/v1/vpn: servers, plans, users and their devices. Every change renders the servers' documents again
/// (checked by the agent's validator before anything is stored) and reaches their agents in the next bundle.
/// Client configurations hold a private key: admins only.
extension CoordinatorAPI {
    func registerVPN(on api: RouterGroup<CoordinatorContext>) {
        api.get("vpn/servers") { _, _ in JSONResponse.make(try await store.vpnServers().map(VPNServer.View.init)) }
        api.get("vpn/servers/{name}") { _, context in
            JSONResponse.make(VPNServer.View(server: try await server(try context.parameters.require("name"))))
        }
        api.put("vpn/servers/{name}") { request, context in
            let name = try context.parameters.require("name")
            guard VPNNames.isValidServer(name) else { throw APIError.badRequest("a VPN server name is 1-58 letters, digits, '-' or '_'") }
            let body = try await decode(VPNServerRequest.self, request, context)
            let existing = try await store.vpnServer(name: name)
            let server = try body.server(name: name, existing: existing)
            let devices = try await store.vpnDevices(server: name)
            let pool = server.poolNetworks
            for device in devices {
                for address in device.addresses.compactMap({ try? IPNetwork.parse($0) }) where !pool.contains(where: { $0.contains(address) }) {
                    throw APIError(
                        status: .conflict, message: "device \(device.peerName) has \(address), which the new pool does not hold; remove it first")
                }
            }
            try await validateRendering(server, devices: devices)
            let existed = try await store.putVPNServer(server)
            await changed()
            return JSONResponse.make(VPNServer.View(server: server), status: existed ? .ok : .created)
        }
        api.delete("vpn/servers/{name}") { _, context in
            let name = try context.parameters.require("name")
            guard try await store.vpnServer(name: name) != nil else { throw APIError.notFound("VPN server \"\(name)\"") }
            let devices = try await store.vpnDevices(server: name)
            guard devices.isEmpty else {
                throw APIError(
                    status: .conflict, message: "VPN server \"\(name)\" has \(devices.count) devices (\(devices.prefix(5).map(\.peerName).joined(separator: ", "))…); remove them first")
            }
            _ = try await store.deleteVPNServer(name: name)
            await changed()
            return Response(status: .noContent)
        }

        api.get("vpn/plans") { _, _ in JSONResponse.make(try await store.vpnPlans()) }
        api.put("vpn/plans/{name}") { request, context in
            let name = try context.parameters.require("name")
            guard ConfigLoader.isValidName(name) else { throw APIError.badRequest("a plan name is 1-64 letters, digits, '-' or '_'") }
            let body = try await decode(VPNPlanRequest.self, request, context)
            let plan = try body.plan(name: name)
            try await validateAllServers(plans: { $0.filter { $0.name != name } + [plan] })
            let existed = try await store.putVPNPlan(plan)
            await changed()
            return JSONResponse.make(plan, status: existed ? .ok : .created)
        }
        api.delete("vpn/plans/{name}") { _, context in
            let name = try context.parameters.require("name")
            let users = try await store.vpnUsers().filter { $0.plan == name }
            guard users.isEmpty else {
                throw APIError(status: .conflict, message: "plan \"\(name)\" is assigned to \(users.prefix(5).map(\.name).joined(separator: ", "))")
            }
            guard try await store.deleteVPNPlan(name: name) else { throw APIError.notFound("plan \"\(name)\"") }
            await changed()
            return Response(status: .noContent)
        }

        api.get("vpn/users") { _, _ in
            let usage = try await peerUsage()
            let devices = Dictionary(grouping: try await store.vpnDevices(), by: \.user)
            return JSONResponse.make(try await store.vpnUsers().map { VPNUserView(user: $0, devices: devices[$0.name] ?? [], usage: usage) })
        }
        api.get("vpn/users/{name}") { _, context in
            let user = try await user(try context.parameters.require("name"))
            return JSONResponse.make(VPNUserView(user: user, devices: try await store.vpnDevices(user: user.name), usage: try await peerUsage()))
        }
        api.put("vpn/users/{name}") { request, context in
            let name = try context.parameters.require("name")
            guard VPNNames.isValidUser(name) else { throw APIError.badRequest("a user name is 1-48 letters, digits, '-', '_', '.' or '@'") }
            let body = try await decode(VPNUserRequest.self, request, context)
            let existing = try await store.vpnUser(name: name)
            let user = VPNUser(
                name: name, plan: body.plan, profile: body.profile ?? "full", disabled: body.disabled ?? false,
                createdAt: existing?.createdAt ?? Date().timeIntervalSince1970)
            guard VPNUser.profiles.contains(user.profile) else {
                throw APIError.badRequest("profile must be one of \(VPNUser.profiles.joined(separator: ", "))")
            }
            if let plan = user.plan, !(try await store.vpnPlans().contains { $0.name == plan }) { throw APIError.notFound("plan \"\(plan)\"") }
            return try await storeUser(user, existed: existing != nil)
        }
        for (action, disabled) in [("disable", true), ("enable", false)] {
            api.post("vpn/users/{name}/\(action)") { _, context in
                var user = try await user(try context.parameters.require("name"))
                user.disabled = disabled
                return try await storeUser(user, existed: true)
            }
        }
        api.delete("vpn/users/{name}") { _, context in
            let name = try context.parameters.require("name")
            guard try await store.deleteVPNUser(name: name) else { throw APIError.notFound("VPN user \"\(name)\"") }
            await changed()
            return Response(status: .noContent)
        }

        api.get("vpn/users/{name}/devices") { _, context in
            let user = try await user(try context.parameters.require("name"))
            let usage = try await peerUsage()
            return JSONResponse.make(try await store.vpnDevices(user: user.name).map { VPNDeviceView(device: $0, usage: usage) })
        }
        api.post("vpn/users/{name}/devices") { request, context in
            let body = try await decode(VPNDeviceRequest.self, request, context)
            let user = try await user(try context.parameters.require("name"))
            guard VPNNames.isValidDevice(body.name) else { throw APIError.badRequest("a device name is 1-15 letters, digits, '-' or '_'") }
            if let key = body.publicKey, WireGuardKey(base64: key) == nil { throw APIError.badRequest("public_key: not a WireGuard key (32 bytes, base64)") }
            let server = try await server(body.server)
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
                await changed()
                return JSONResponse.make(VPNDeviceView(device: device, usage: [:]), status: .created)
            }
        }
        api.get("vpn/users/{name}/devices/{device}") { _, context in
            let device = try await device(context)
            return JSONResponse.make(VPNDeviceView(device: device, usage: try await peerUsage()))
        }
        api.delete("vpn/users/{name}/devices/{device}") { _, context in
            let device = try await device(context)
            _ = try await store.deleteVPNDevice(user: device.user, name: device.name)
            await changed()
            return Response(status: .noContent)
        }
        api.get("vpn/users/{name}/devices/{device}/config") { _, context in
            let text = try await clientConfiguration(context)
            return Response(
                status: .ok, headers: [.contentType: "text/plain; charset=utf-8", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        api.get("vpn/users/{name}/devices/{device}/qr.png") { _, context in
            let image = try QRCodeImage(encoding: try await clientConfiguration(context))
            return Response(status: .ok, headers: [.contentType: "image/png", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(bytes: image.png())))
        }
        api.get("vpn/users/{name}/devices/{device}/qr.svg") { _, context in
            let image = try QRCodeImage(encoding: try await clientConfiguration(context))
            return Response(status: .ok, headers: [.contentType: "image/svg+xml", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(string: image.svg)))
        }
    }

    // MARK: - Helpers

    private func server(_ name: String) async throws -> VPNServer {
        guard let server = try await store.vpnServer(name: name) else { throw APIError.notFound("VPN server \"\(name)\"") }
        return server
    }

    private func user(_ name: String) async throws -> VPNUser {
        guard let user = try await store.vpnUser(name: name) else { throw APIError.notFound("VPN user \"\(name)\"") }
        return user
    }

    private func device(_ context: CoordinatorContext) async throws -> VPNDevice {
        let user = try context.parameters.require("name")
        let name = try context.parameters.require("device")
        guard let device = try await store.vpnDevice(user: user, name: name) else { throw APIError.notFound("device \"\(name)\" of VPN user \"\(user)\"") }
        return device
    }

    private func storeUser(_ user: VPNUser, existed: Bool) async throws -> Response {
        try await validateAllServers(users: { $0.filter { $0.name != user.name } + [user] })
        _ = try await store.putVPNUser(user)
        await changed()
        return JSONResponse.make(
            VPNUserView(user: user, devices: try await store.vpnDevices(user: user.name), usage: try await peerUsage()), status: existed ? .ok : .created)
    }

    /// The device's wg-quick text; the caller must be an admin (the file holds the device's private key).
    private func clientConfiguration(_ context: CoordinatorContext) async throws -> String {
        guard APIRole.current == .admin else {
            throw APIError(status: .forbidden, message: "client configurations hold private keys: only admin tokens may read them")
        }
        let device = try await device(context)
        guard device.privateKey != nil else {
            throw APIError(status: .conflict, message: "device \(device.peerName) brought its own key: the coordinator has no configuration with a private key to give")
        }
        let server = try await server(device.server)
        guard let file = VPNRendering.clientFile(device, server: server) else { throw APIError(status: .internalServerError, message: "the server's key is unreadable") }
        return file.text
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

    /// Peer reports from every agent: pipeline id → peer name → (agent → report).
    private func peerUsage() async throws -> [String: [String: [String: PeerUsageView]]] {
        var usage: [String: [String: [String: PeerUsageView]]] = [:]
        for agent in try await store.agents() {
            for (pipeline, report) in agent.report {
                for (peer, numbers) in report.peers ?? [:] { usage[pipeline, default: [:]][peer, default: [:]][agent.id] = PeerUsageView(numbers) }
            }
        }
        return usage
    }
}

// MARK: - Requests

struct VPNServerRequest: Decodable {
    let agent: String?
    let selector: String?
    let interface: String?
    let listenPort: Int?
    let endpoint: String
    let addresses: [String]
    let pool: [String]
    let dns: [String]?
    let clientAllowedIPs: [String]?
    let mtu: Int?
    let masqueradeInterface: String?

    enum CodingKeys: String, CodingKey {
        case agent, selector, interface, listenPort = "listen_port", endpoint, addresses, pool, dns
        case clientAllowedIPs = "client_allowed_ips", mtu, masqueradeInterface = "masquerade_interface"
    }

    /// The server, keeping an existing one's key and creation time.
    func server(name: String, existing: VPNServer?) throws -> VPNServer {
        let selector = try self.selector.map { try LabelSelector(parsing: $0) }
        guard (agent == nil) != (selector == nil) else { throw APIError.badRequest("give exactly one of agent and selector") }
        if let agent, !Identifiers.isValidAgentID(agent) { throw APIError.badRequest("\"\(agent)\" is not an agent id") }
        guard !pool.isEmpty else { throw APIError.badRequest("pool: at least one network devices get their addresses from") }
        for network in pool {
            guard let parsed = try? IPNetwork.parse(network), !parsed.isSingleAddress else { throw APIError.badRequest("pool: \"\(network)\" is not a network") }
        }
        for address in dns ?? [] where (try? IPNetwork.parse(address))?.isSingleAddress != true {
            throw APIError.badRequest("dns: \"\(address)\" is not an IP address")
        }
        for network in clientAllowedIPs ?? [] where (try? IPNetwork.parse(network)) == nil {
            throw APIError.badRequest("client_allowed_ips: \"\(network)\" is not a network")
        }
        return VPNServer(
            name: name, agent: agent, selector: selector, interface: interface ?? "wg0", listenPort: listenPort ?? 51820, endpoint: endpoint,
            addresses: addresses, pool: pool, dns: dns ?? [], clientAllowedIPs: clientAllowedIPs ?? ["0.0.0.0/0", "::/0"], mtu: mtu,
            masqueradeInterface: masqueradeInterface, privateKey: existing?.privateKey ?? WireGuardKey.generatePrivate().base64,
            createdAt: existing?.createdAt ?? Date().timeIntervalSince1970)
    }
}

struct VPNPlanRequest: Decodable {
    let rate: String?
    let ceil: String?
    let quota: String?
    let period: String?

    func plan(name: String) throws -> VPNPlan {
        for (key, value) in [("rate", rate), ("ceil", ceil)] {
            guard let value else { continue }
            do { _ = try ByteRateParser.parse(value) } catch { throw APIError.badRequest("\(key): \(error)") }
        }
        if ceil != nil, rate == nil { throw APIError.badRequest("ceil needs a rate") }
        if let quota {
            do { _ = try ByteSizeParser.parse(quota) } catch { throw APIError.badRequest("quota: \(error)") }
        }
        if let period, !["day", "week", "month"].contains(period) { throw APIError.badRequest("period is day, week or month") }
        return VPNPlan(name: name, rate: rate, ceil: ceil, quota: quota, period: period, createdAt: Date().timeIntervalSince1970)
    }
}

struct VPNUserRequest: Decodable {
    let plan: String?
    let profile: String?
    let disabled: Bool?
}

struct VPNDeviceRequest: Decodable {
    let name: String
    let server: String
    let publicKey: String?

    enum CodingKeys: String, CodingKey { case name, server, publicKey = "public_key" }
}

// MARK: - Views

struct PeerUsageView: Encodable {
    let receiveBytes: Double
    let transmitBytes: Double
    let lastHandshake: Double
    let periodBytes: Double
    let quotaBytes: Double?

    init(_ report: PeerReport) {
        receiveBytes = report.receiveBytes
        transmitBytes = report.transmitBytes
        lastHandshake = report.lastHandshake
        periodBytes = report.periodBytes
        quotaBytes = report.quotaBytes
    }

    enum CodingKeys: String, CodingKey {
        case receiveBytes = "receive_bytes", transmitBytes = "transmit_bytes", lastHandshake = "last_handshake", periodBytes = "period_bytes"
        case quotaBytes = "quota_bytes"
    }
}

/// A device without its private key, with what each of its server's agents reported for it.
struct VPNDeviceView: Encodable {
    let device: VPNDevice
    /// Agent id → usage.
    let usage: [String: PeerUsageView]

    init(device: VPNDevice, usage: [String: [String: [String: PeerUsageView]]]) {
        self.device = device
        self.usage = usage["vpn-\(device.server)"]?[device.peerName] ?? [:]
    }

    enum CodingKeys: String, CodingKey {
        case user, name, server, peer, addresses, publicKey = "public_key", hasPrivateKey = "has_private_key", createdAt = "created_at", usage
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(device.user, forKey: .user)
        try container.encode(device.name, forKey: .name)
        try container.encode(device.server, forKey: .server)
        try container.encode(device.peerName, forKey: .peer)
        try container.encode(device.addresses, forKey: .addresses)
        try container.encode(device.publicKey, forKey: .publicKey)
        try container.encode(device.privateKey != nil, forKey: .hasPrivateKey)
        try container.encode(device.createdAt, forKey: .createdAt)
        try container.encode(usage, forKey: .usage)
    }
}

/// A user with their devices and totals over every device and server.
struct VPNUserView: Encodable {
    let user: VPNUser
    let devices: [VPNDeviceView]

    init(user: VPNUser, devices: [VPNDevice], usage: [String: [String: [String: PeerUsageView]]]) {
        self.user = user
        self.devices = devices.map { VPNDeviceView(device: $0, usage: usage) }
    }

    enum CodingKeys: String, CodingKey { case name, plan, profile, disabled, createdAt = "created_at", devices, receiveBytes = "receive_bytes", transmitBytes = "transmit_bytes" }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(user.name, forKey: .name)
        try container.encode(user.plan, forKey: .plan)
        try container.encode(user.profile, forKey: .profile)
        try container.encode(user.disabled, forKey: .disabled)
        try container.encode(user.createdAt, forKey: .createdAt)
        try container.encode(devices, forKey: .devices)
        let all = devices.flatMap(\.usage.values)
        try container.encode(all.map(\.receiveBytes).reduce(0, +), forKey: .receiveBytes)
        try container.encode(all.map(\.transmitBytes).reduce(0, +), forKey: .transmitBytes)
    }
}
