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
            JSONResponse.make(VPNServer.View(server: try await vpnServer(try context.parameters.require("name"))))
        }
        api.put("vpn/servers/{name}") { request, context in
            let name = try context.parameters.require("name")
            guard VPNNames.isValidServer(name) else { throw APIError.badRequest("a VPN server name is 1-58 letters, digits, '-' or '_'") }
            let (server, created) = try await putVPNServer(name: name, try await decode(VPNServerRequest.self, request, context))
            return JSONResponse.make(VPNServer.View(server: server), status: created ? .created : .ok)
        }
        api.delete("vpn/servers/{name}") { _, context in
            try await deleteVPNServer(name: try context.parameters.require("name"))
            return Response(status: .noContent)
        }

        api.get("vpn/plans") { _, _ in JSONResponse.make(try await store.vpnPlans()) }
        api.put("vpn/plans/{name}") { request, context in
            let name = try context.parameters.require("name")
            let (plan, created) = try await putVPNPlan(name: name, try await decode(VPNPlanRequest.self, request, context))
            return JSONResponse.make(plan, status: created ? .created : .ok)
        }
        api.delete("vpn/plans/{name}") { _, context in
            try await deleteVPNPlan(name: try context.parameters.require("name"))
            return Response(status: .noContent)
        }

        api.get("vpn/users") { _, _ in
            let usage = try await vpnPeerUsage()
            let devices = Dictionary(grouping: try await store.vpnDevices(), by: \.user)
            return JSONResponse.make(try await store.vpnUsers().map { VPNUserView(user: $0, devices: devices[$0.name] ?? [], usage: usage) })
        }
        api.get("vpn/users/{name}") { _, context in
            let user = try await vpnUser(try context.parameters.require("name"))
            return JSONResponse.make(VPNUserView(user: user, devices: try await store.vpnDevices(user: user.name), usage: try await vpnPeerUsage()))
        }
        api.put("vpn/users/{name}") { request, context in
            let (user, created) = try await putVPNUser(name: try context.parameters.require("name"), try await decode(VPNUserRequest.self, request, context))
            return try await userResponse(user, created: created)
        }
        for (action, disabled) in [("disable", true), ("enable", false)] {
            api.post("vpn/users/{name}/\(action)") { _, context in
                try await userResponse(try await setVPNUser(try context.parameters.require("name"), disabled: disabled), created: false)
            }
        }
        api.delete("vpn/users/{name}") { _, context in
            try await deleteVPNUser(name: try context.parameters.require("name"))
            return Response(status: .noContent)
        }

        api.get("vpn/users/{name}/devices") { _, context in
            let user = try await vpnUser(try context.parameters.require("name"))
            let usage = try await vpnPeerUsage()
            return JSONResponse.make(try await store.vpnDevices(user: user.name).map { VPNDeviceView(device: $0, usage: usage) })
        }
        api.post("vpn/users/{name}/devices") { request, context in
            let body = try await decode(VPNDeviceRequest.self, request, context)
            let device = try await createVPNDevice(user: try context.parameters.require("name"), body)
            return JSONResponse.make(VPNDeviceView(device: device, usage: [:]), status: .created)
        }
        api.get("vpn/users/{name}/devices/{device}") { _, context in
            let device = try await vpnDevice(user: try context.parameters.require("name"), name: try context.parameters.require("device"))
            return JSONResponse.make(VPNDeviceView(device: device, usage: try await vpnPeerUsage()))
        }
        api.delete("vpn/users/{name}/devices/{device}") { _, context in
            try await deleteVPNDevice(user: try context.parameters.require("name"), name: try context.parameters.require("device"))
            return Response(status: .noContent)
        }
        api.get("vpn/users/{name}/devices/{device}/config") { _, context in
            Self.configurationResponse(try await apiClientConfiguration(context))
        }
        api.get("vpn/users/{name}/devices/{device}/qr.png") { _, context in
            let image = try QRCodeImage(encoding: try await apiClientConfiguration(context))
            return Response(status: .ok, headers: [.contentType: "image/png", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(bytes: image.png())))
        }
        api.get("vpn/users/{name}/devices/{device}/qr.svg") { _, context in
            try Self.qrResponse(try await apiClientConfiguration(context))
        }
    }

    static func configurationResponse(_ text: String, filename: String? = nil) -> Response {
        var headers: HTTPFields = [.contentType: "text/plain; charset=utf-8", .cacheControl: "no-store"]
        if let filename { headers[.contentDisposition] = "attachment; filename=\"\(filename)\"" }
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    static func qrResponse(_ text: String) throws -> Response {
        let image = try QRCodeImage(encoding: text)
        return Response(status: .ok, headers: [.contentType: "image/svg+xml", .cacheControl: "no-store"], body: .init(byteBuffer: ByteBuffer(string: image.svg)))
    }

    private func userResponse(_ user: VPNUser, created: Bool) async throws -> Response {
        JSONResponse.make(
            VPNUserView(user: user, devices: try await store.vpnDevices(user: user.name), usage: try await vpnPeerUsage()), status: created ? .created : .ok)
    }

    /// The device's wg-quick text for an admin token (the file holds the device's private key).
    private func apiClientConfiguration(_ context: CoordinatorContext) async throws -> String {
        guard APIRole.current == .admin else {
            throw APIError(status: .forbidden, message: "client configurations hold private keys: only admin tokens may read them")
        }
        return try await clientConfiguration(user: try context.parameters.require("name"), device: try context.parameters.require("device"))
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
