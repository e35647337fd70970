import Foundation
import Hummingbird
import WeirCore

/// VPN on the console: WireGuard servers (with where each is in its rollout), plans (rate, quota), and users
/// — searched and paged on the server, with their devices' traffic as the agents report it. Every change
/// goes through the API's own VPN operations (`VPNChanges`), audited. Everyone reads; operators and admins
/// change; only admins read a device's configuration (it holds its private key).
extension Console {
    static let vpnUserPageSize = 100

    func registerVPN(on router: Router<CoordinatorContext>) {
        router.get("vpn") { request, _ -> Response in try await vpnPage(request.uri.queryParameters) }
        router.post("vpn/servers/create") { request, context -> Response in
            try await vpnChange(request, context, action: "vpn.server.put") { form in
                func list(_ key: String) -> [String] {
                    (form[key] ?? "").split(whereSeparator: { $0 == "," || $0.isWhitespace }).map(String.init)
                }
                let agent = Self.field(form, "agent"), selector = Self.field(form, "selector")
                let port = Self.field(form, "listen_port")
                guard port.isEmpty || Int(port).map({ (1...65535).contains($0) }) == true else { throw APIError.badRequest("listen port: a number 1-65535") }
                let body = VPNServerRequest(
                    agent: agent.isEmpty ? nil : agent, selector: selector.isEmpty ? nil : selector, interface: Self.optional(form, "interface"),
                    listenPort: Int(port), endpoint: Self.field(form, "endpoint"), addresses: list("addresses"), pool: list("pool"),
                    dns: list("dns"), clientAllowedIPs: nil, mtu: nil, masqueradeInterface: Self.optional(form, "masquerade_interface"))
                let (server, created) = try await api.putVPNServer(name: Self.field(form, "name"), body)
                return "VPN server \(server.name) \(created ? "created" : "changed"): its agents run it now."
            }
        }
        router.post("vpn/servers/{name}/delete") { request, context -> Response in
            let name = try context.parameters.require("name")
            return try await vpnChange(request, context, action: "vpn.server.delete \(name)") { _ in
                try await api.deleteVPNServer(name: name)
                return "VPN server \(name) deleted."
            }
        }
        router.post("vpn/plans/create") { request, context -> Response in
            try await vpnChange(request, context, action: "vpn.plan.put") { form in
                let body = VPNPlanRequest(
                    rate: Self.optional(form, "rate"), ceil: Self.optional(form, "ceil"), quota: Self.optional(form, "quota"),
                    period: Self.optional(form, "period"))
                let (plan, created) = try await api.putVPNPlan(name: Self.field(form, "name"), body)
                return "Plan \(plan.name) \(created ? "created" : "changed")."
            }
        }
        router.post("vpn/plans/{name}/delete") { request, context -> Response in
            let name = try context.parameters.require("name")
            return try await vpnChange(request, context, action: "vpn.plan.delete \(name)") { _ in
                try await api.deleteVPNPlan(name: name)
                return "Plan \(name) deleted."
            }
        }
        router.post("vpn/users/create") { request, context -> Response in
            var request = request
            let form = try await FormBody.read(&request)
            let name = Self.field(form, "name")
            if let refused = await require(.operator, "change VPN users", context: context) { return refused }
            do {
                if try await api.store.vpnUser(name: name) != nil { throw APIError(status: .conflict, message: "a VPN user named \(name) exists") }
                try await audited("vpn.user.create \(name)", context) {
                    _ = try await api.putVPNUser(
                        name: name, VPNUserRequest(plan: Self.optional(form, "plan"), profile: Self.optional(form, "profile"), disabled: false))
                }
            } catch let error as APIError {
                return try await vpnPage(Hummingbird.Parameters(), error: error.message, details: error.details)
            }
            return Self.redirect("/vpn/users/\(Self.pathComponent(name))")
        }
        registerVPNUser(on: router)
    }

    static func field(_ form: [String: String], _ key: String) -> String { (form[key] ?? "").trimmingCharacters(in: .whitespacesAndNewlines) }
    static func optional(_ form: [String: String], _ key: String) -> String? { field(form, key).isEmpty ? nil : field(form, key) }
    static func pathComponent(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? text }

    /// An operator's change on the VPN page, audited; the page again with its message or the refusal.
    private func vpnChange(
        _ request: Request, _ context: CoordinatorContext, action: String, _ change: @escaping ([String: String]) async throws -> String
    ) async throws -> Response {
        if let refused = await require(.operator, "change the VPN", context: context) { return refused }
        var request = request
        let form = try await FormBody.read(&request)
        var message = ""
        let name = Self.field(form, "name")
        do {
            try await audited(action + (name.isEmpty ? "" : " \(name)"), context) { message = try await change(form) }
        } catch let error as APIError {
            return try await vpnPage(Hummingbird.Parameters(), error: error.message, details: error.details)
        }
        return try await vpnPage(Hummingbird.Parameters(), message: message)
    }

    private func vpnPage(_ parameters: Hummingbird.Parameters, message: String? = nil, error: String? = nil, details: [String] = []) async throws -> Response {
        let fleet = try await snapshot()
        let canChange = userCanChange, csrf = ConsoleUser.current?.session.csrf ?? ""
        let devices = try await api.store.vpnDevices()
        let byServer = Dictionary(grouping: devices, by: \.server), byUser = Dictionary(grouping: devices, by: \.user)
        let usage = try await api.vpnPeerUsage()
        let plans = try await api.store.vpnPlans()
        let query = (parameters.get("q") ?? "").trimmingCharacters(in: .whitespaces)
        let users = try await api.store.vpnUsers().filter { query.isEmpty || $0.name.localizedCaseInsensitiveContains(query) }
        let pages = max(1, (users.count + Self.vpnUserPageSize - 1) / Self.vpnUserPageSize)
        let page = min(max(1, Int(parameters.get("page") ?? "") ?? 1), pages)
        let shown = users.dropFirst((page - 1) * Self.vpnUserPageSize).prefix(Self.vpnUserPageSize)
        func link(_ page: Int) -> String {
            var components = URLComponents()
            components.queryItems = (query.isEmpty ? [] : [URLQueryItem(name: "q", value: query)]) + [URLQueryItem(name: "page", value: "\(page)")]
            return "/vpn?" + (components.percentEncodedQuery ?? "")
        }
        var values: [String: Any] = [
            "vpnPage": true, "canChange": canChange, "csrf": csrf, "query": query,
            "servers": try await api.store.vpnServers().map { server -> [String: Any] in
                [
                    "name": server.name, "on": server.agent.map { "agent \($0)" } ?? "agents with \(server.selector?.description ?? "")",
                    "endpoint": server.endpoint, "interface": server.interface, "port": server.listenPort,
                    "pool": server.pool.joined(separator: ", "), "devices": byServer[server.name]?.count ?? 0,
                    "publicKey": server.publicKey, "state": fleet.counts(server.documentName), "csrf": csrf, "canChange": canChange,
                ]
            },
            "plans": plans.map { plan -> [String: Any] in
                [
                    "name": plan.name, "rate": plan.rate ?? "not shaped", "ceil": plan.ceil ?? plan.rate ?? "—",
                    "quota": plan.quota.map { "\($0) per \(plan.period ?? "month")" } ?? "no quota", "csrf": csrf, "canChange": canChange,
                ]
            },
            "planNames": plans.map(\.name), "profiles": VPNUser.profiles,
            "users": shown.map { user -> [String: Any] in
                let views = (byUser[user.name] ?? []).map { VPNDeviceView(device: $0, usage: usage) }
                let all = views.flatMap(\.usage.values)
                let quota = all.compactMap(\.quotaBytes).max()
                let period = views.map { $0.usage.values.map(\.periodBytes).max() ?? 0 }.reduce(0, +)
                return [
                    "name": user.name, "link": Self.pathComponent(user.name), "plan": user.plan ?? "none", "profile": user.profile,
                    "status": user.disabled ? "disabled" : "enabled", "devices": views.count,
                    "traffic": "\(Self.bytes(all.map(\.receiveBytes).reduce(0, +))) / \(Self.bytes(all.map(\.transmitBytes).reduce(0, +)))",
                    "period": quota.map { "\(Self.bytes(period)) of \(Self.bytes($0))" } ?? Self.bytes(period),
                ]
            },
            "usersSummary": query.isEmpty ? "\(users.count) user\(users.count == 1 ? "" : "s")" : "\(users.count) user\(users.count == 1 ? "" : "s") match \"\(query)\"",
            "emptyUsers": query.isEmpty ? "No VPN users yet." : "No user name contains \"\(query)\".",
        ]
        var pager: [String: Any] = [:]
        if page > 1 { pager["previous"] = link(page - 1) }
        if page < pages { pager["next"] = link(page + 1) }
        if pages > 1 { pager["range"] = "page \(page) of \(pages)" }
        values["userPages"] = pager
        if let message { values["message"] = message }
        if let error {
            values["error"] = error
            values["details"] = details.map { Diagnostic($0).text }
        }
        return self.page("vpn", title: "VPN", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
