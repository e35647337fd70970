import Foundation
import Hummingbird

/// Console accounts and roles, and whether everyone must use two-factor sign-in: admins only. An admin
/// cannot delete or demote themselves (the console never ends up without an administrator that way).
extension Console {
    func registerAdministrators(on router: Router<CoordinatorContext>) {
        router.get("administrators") { _, context -> Response in
            if let refused = await require(.admin, "manage console accounts", context: context) { return refused }
            return try await administratorsPage()
        }
        router.post("administrators/create") { request, context -> Response in
            if let refused = await require(.admin, "manage console accounts", context: context) { return refused }
            var request = request
            let form = try await FormBody.read(&request)
            let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces).lowercased()
            guard let role = APIRole(rawValue: form["role"] ?? "") else { return try await administratorsPage(error: "Choose a role.") }
            let given = form["password"] ?? ""
            let password = given.isEmpty ? ConsolePasswords.generate() : given
            do {
                try await accounts.createAccount(name: name, role: role, password: password)
            } catch let error as ConsoleStore.CreateError {
                return try await administratorsPage(error: "Account not created: \(error.description).")
            }
            await auditChange("account.create \(name)", "role \(role.rawValue)", context)
            return try await administratorsPage(created: given.isEmpty ? (name, password) : nil, message: given.isEmpty ? nil : "Account \(name) created.")
        }
        router.post("administrators/role") { request, context -> Response in
            if let refused = await require(.admin, "manage console accounts", context: context) { return refused }
            var request = request
            let form = try await FormBody.read(&request)
            let name = form["name"] ?? ""
            guard let role = APIRole(rawValue: form["role"] ?? ""), let account = try await accounts.account(name) else {
                return try await administratorsPage(error: "No such account or role.")
            }
            guard name != ConsoleUser.current?.account.name else { return try await administratorsPage(error: "You cannot change your own role.") }
            try await accounts.setRole(name, role)
            await auditChange("account.role \(name)", "\(account.role.rawValue) -> \(role.rawValue)", context)
            return try await administratorsPage(message: "\(name) is now \(role.rawValue).")
        }
        router.post("administrators/unlock") { request, context -> Response in
            if let refused = await require(.admin, "manage console accounts", context: context) { return refused }
            var request = request
            let name = try await FormBody.read(&request)["name"] ?? ""
            guard try await accounts.account(name) != nil else { return try await administratorsPage(error: "No such account.") }
            try await accounts.unlock(name)
            await auditChange("account.unlock \(name)", "", context)
            return try await administratorsPage(message: "\(name) is unlocked.")
        }
        router.post("administrators/delete") { request, context -> Response in
            if let refused = await require(.admin, "manage console accounts", context: context) { return refused }
            var request = request
            let name = try await FormBody.read(&request)["name"] ?? ""
            guard name != ConsoleUser.current?.account.name else { return try await administratorsPage(error: "You cannot delete your own account.") }
            guard let account = try await accounts.account(name) else { return try await administratorsPage(error: "No such account.") }
            try await accounts.deleteAccount(name)
            await auditChange("account.delete \(name)", "role \(account.role.rawValue); its sessions ended", context)
            return try await administratorsPage(message: "\(name) was deleted and signed out.")
        }
        router.post("administrators/two-factor") { request, context -> Response in
            if let refused = await require(.admin, "manage console accounts", context: context) { return refused }
            var request = request
            let required = try await FormBody.read(&request)["required"] == "true"
            // Whoever requires it has it: the page would otherwise send them to set it up at once.
            if required, ConsoleUser.current?.account.twoFactor != true {
                return try await administratorsPage(error: "Set up your own two-factor sign-in first (on your account page), then require it for everyone.")
            }
            try await accounts.setRequiresTwoFactor(required)
            await auditChange("policy.two_factor", required ? "required for every account" : "optional", context)
            return try await administratorsPage(
                message: required ? "Two-factor sign-in is now required: accounts without it must set it up at their next page." : "Two-factor sign-in is optional.")
        }
    }

    private func auditChange(_ action: String, _ detail: String, _ context: CoordinatorContext) async {
        await audit.record(actor: ConsoleUser.current?.actor ?? "?", source: context.clientAddress, action: action, outcome: "ok", detail: detail)
    }

    private func administratorsPage(created: (name: String, password: String)? = nil, message: String? = nil, error: String? = nil) async throws -> Response {
        guard let user = ConsoleUser.current else { return Self.redirect("/login") }
        let formatter = ISO8601DateFormatter()
        let now = Date().timeIntervalSince1970
        let required = try await accounts.requiresTwoFactor()
        var rows: [[String: Any]] = []
        for account in try await accounts.accounts() {
            let locked = (account.lockedUntil ?? 0) > now
            rows.append([
                "name": account.name, "csrf": user.session.csrf, "self": account.name == user.account.name, "locked": locked,
                "roles": APIRole.allCases.map { ["value": $0.rawValue, "selected": $0 == account.role] },
                "twoFactorText": account.twoFactor ? "on" : (required ? "required, not set up" : "off"),
                "stateText": locked ? "locked for \(Self.minutes((account.lockedUntil ?? now) - now))" : "active",
                "sessions": try await accounts.sessions(of: account.name).count,
                "created": formatter.string(from: Date(timeIntervalSince1970: account.createdAt)),
            ])
        }
        var values: [String: Any] = [
            "administratorsPage": true, "accounts": rows, "csrf": user.session.csrf,
            "policyText": required ? "required for every account" : "optional", "toggleValue": required ? "false" : "true",
            "toggleText": required ? "Make it optional" : "Require it for everyone",
        ]
        if let created { values["created"] = ["name": created.name, "password": created.password] }
        if let message { values["message"] = message }
        if let error { values["error"] = error }
        return page("administrators", title: "Administrators", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
