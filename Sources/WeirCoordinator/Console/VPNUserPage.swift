import Foundation
import Hummingbird
import NIOCore

/// One VPN user: plan, profile, enabled or not, and their devices — each with its addresses, its traffic and
/// last handshake as the server's agents report them, and for admins its configuration file and QR code
/// (they hold the device's private key: reading one is audited).
extension Console {
    func registerVPNUser(on router: Router<CoordinatorContext>) {
        router.get("vpn/users/{name}") { _, context -> Response in try await vpnUserPage(try context.parameters.require("name")) }
        router.post("vpn/users/{name}/update") { request, context -> Response in
            let name = try context.parameters.require("name")
            return try await userChange(name, request, context, action: "vpn.user.update \(name)") { form in
                let user = try await api.vpnUser(name)
                _ = try await api.putVPNUser(
                    name: name, VPNUserRequest(plan: Self.optional(form, "plan"), profile: Self.optional(form, "profile"), disabled: user.disabled))
                return "Saved."
            }
        }
        for (action, disabled) in [("disable", true), ("enable", false)] {
            router.post("vpn/users/{name}/\(action)") { request, context -> Response in
                let name = try context.parameters.require("name")
                return try await userChange(name, request, context, action: "vpn.user.\(action) \(name)") { _ in
                    _ = try await api.setVPNUser(name, disabled: disabled)
                    return disabled ? "Disabled: the servers drop this user's devices at their next bundle." : "Enabled."
                }
            }
        }
        router.post("vpn/users/{name}/delete") { _, context -> Response in
            let name = try context.parameters.require("name")
            if let refused = await require(.operator, "change VPN users", context: context) { return refused }
            do {
                try await audited("vpn.user.delete \(name)", context) { try await api.deleteVPNUser(name: name) }
            } catch let error as APIError {
                return try await vpnUserPage(name, error: error.message)
            }
            return Self.redirect("/vpn")
        }
        router.post("vpn/users/{name}/devices/create") { request, context -> Response in
            let name = try context.parameters.require("name")
            return try await userChange(name, request, context, action: "vpn.device.create \(name)") { form in
                let device = try await api.createVPNDevice(
                    user: name, VPNDeviceRequest(name: Self.field(form, "device"), server: Self.field(form, "server"), publicKey: Self.optional(form, "public_key")))
                return "Device \(device.name) added with \(device.addresses.joined(separator: ", "))."
                    + (device.privateKey == nil ? " Its owner configures it with their own private key." : "")
            }
        }
        router.post("vpn/users/{name}/devices/{device}/delete") { request, context -> Response in
            let name = try context.parameters.require("name"), device = try context.parameters.require("device")
            return try await userChange(name, request, context, action: "vpn.device.delete \(name).\(device)") { _ in
                try await api.deleteVPNDevice(user: name, name: device)
                return "Device \(device) removed; its addresses go back to the pool."
            }
        }
        router.get("vpn/users/{name}/devices/{device}/config") { _, context -> Response in
            let device = try context.parameters.require("device")
            return try await configuration(context) { CoordinatorAPI.configurationResponse($0, filename: "\(device).conf") }
        }
        router.get("vpn/users/{name}/devices/{device}/qr.svg") { _, context -> Response in
            try await configuration(context) { try CoordinatorAPI.qrResponse($0) }
        }
    }

    /// The device's configuration, for admins only (refusals audited), each reading audited.
    private func configuration(_ context: CoordinatorContext, _ respond: (String) throws -> Response) async throws -> Response {
        if let refused = await require(.admin, "read VPN client configurations (they hold private keys)", context: context) { return refused }
        let (user, device) = (try context.parameters.require("name"), try context.parameters.require("device"))
        var text = ""
        do {
            try await audited("vpn.device.config \(user).\(device)", context) {
                text = try await api.clientConfiguration(user: user, device: device)
                AuditNote.set("configuration with the device's private key given out")
            }
        } catch let error as APIError {
            return errorPage(error.status, error.message)
        }
        return try respond(text)
    }

    private func userChange(
        _ name: String, _ request: Request, _ context: CoordinatorContext, action: String, _ change: @escaping ([String: String]) async throws -> String
    ) async throws -> Response {
        if let refused = await require(.operator, "change VPN users", context: context) { return refused }
        var request = request
        let form = try await FormBody.read(&request)
        var message = ""
        do {
            try await audited(action, context) { message = try await change(form) }
        } catch let error as APIError {
            return try await vpnUserPage(name, error: error.message, details: error.details)
        }
        return try await vpnUserPage(name, message: message)
    }

    private func vpnUserPage(_ name: String, message: String? = nil, error: String? = nil, details: [String] = []) async throws -> Response {
        guard let user = try await api.store.vpnUser(name: name) else { return errorPage(.notFound, "There is no VPN user \(name).") }
        let canChange = userCanChange, csrf = ConsoleUser.current?.session.csrf ?? ""
        let admin = ConsoleUser.current?.account.role == .admin
        let usage = try await api.vpnPeerUsage()
        let servers = try await api.store.vpnServers()
        let plans = try await api.store.vpnPlans()
        let now = Date().timeIntervalSince1970
        let link = Self.pathComponent(user.name)
        var values: [String: Any] = [
            "vpnPage": true, "name": user.name, "link": link, "plan": user.plan ?? "none", "profile": user.profile, "disabled": user.disabled,
            "status": user.disabled ? "disabled" : "enabled", "canChange": canChange, "csrf": csrf,
            "plans": [["name": "", "label": "none", "selected": user.plan == nil]]
                + plans.map { ["name": $0.name, "label": $0.name, "selected": $0.name == user.plan] },
            "profiles": VPNUser.profiles.map { ["name": $0, "selected": $0 == user.profile] },
            "servers": servers.map(\.name), "hasServers": !servers.isEmpty,
            "devices": try await api.store.vpnDevices(user: user.name).map { device -> [String: Any] in
                let view = VPNDeviceView(device: device, usage: usage)
                let reports = view.usage.values
                let handshake = reports.map(\.lastHandshake).max() ?? 0
                let quota = reports.compactMap(\.quotaBytes).max(), period = reports.map(\.periodBytes).max() ?? 0
                return [
                    "name": device.name, "server": device.server, "addresses": device.addresses.joined(separator: ", "),
                    "key": device.privateKey == nil ? "brought by its owner" : "made by the coordinator",
                    "traffic": "\(Self.bytes(reports.map(\.receiveBytes).reduce(0, +))) / \(Self.bytes(reports.map(\.transmitBytes).reduce(0, +)))",
                    "handshake": handshake > 0 ? Self.age(now - handshake) : "never",
                    "period": quota.map { "\(Self.bytes(period)) of \(Self.bytes($0))" } ?? Self.bytes(period),
                    "config": admin && device.privateKey != nil, "base": "/vpn/users/\(link)/devices/\(Self.pathComponent(device.name))",
                    "csrf": csrf, "canChange": canChange,
                ]
            },
        ]
        if let message { values["message"] = message }
        if let error {
            values["error"] = error
            values["details"] = details.map { Diagnostic($0).text }
        }
        return page("vpn_user", title: "VPN user \(user.name)", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
