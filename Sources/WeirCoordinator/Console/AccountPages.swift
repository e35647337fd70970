import Foundation
import Hummingbird

/// The signed-in person's own account: two-factor sign-in (enrol with a QR code, recovery codes shown once,
/// turn off with the password unless administrators require it), password change (ends the other sessions),
/// and their sessions, each of which they can end.
extension Console {
    func registerAccount(on router: Router<CoordinatorContext>) {
        router.get("account") { request, _ -> Response in
            try await accountPage(required: request.uri.queryParameters.get("required") != nil)
        }
        router.post("account/2fa/start") { _, context -> Response in
            guard let user = ConsoleUser.current else { return Self.redirect("/login") }
            guard !user.account.twoFactor else { return try await accountPage(error: "Two-factor sign-in is on already.") }
            let secret = TwoFactor.newSecret()
            try await accounts.setPendingTwoFactor(user.account.name, secret: secret)
            await audit.record(actor: user.actor, source: context.clientAddress, action: "two_factor.enrol", outcome: "ok", detail: "started")
            return try await accountPage(enrolling: secret)
        }
        router.post("account/2fa/confirm") { request, context -> Response in
            guard let user = ConsoleUser.current else { return Self.redirect("/login") }
            var request = request
            let code = try await FormBody.read(&request)["code"] ?? ""
            guard let secret = try await accounts.pendingTwoFactor(user.account.name) else {
                return try await accountPage(error: "Start the set-up again: no key is waiting for a code.")
            }
            guard let step = TwoFactor.matchingStep(secret: secret, code: code, time: Date().timeIntervalSince1970) else {
                await audit.record(actor: user.actor, source: context.clientAddress, action: "two_factor.enrol", outcome: "failed", detail: "wrong code")
                return try await accountPage(enrolling: secret, error: "That code does not match. Check the app's clock and enter the current code.")
            }
            let codes = TwoFactor.newRecoveryCodes()
            try await accounts.enableTwoFactor(user.account.name, secret: secret, usedStep: step, recoveryCodes: codes)
            await audit.record(actor: user.actor, source: context.clientAddress, action: "two_factor.enable", outcome: "ok")
            return try await accountPage(recoveryCodes: codes)
        }
        router.post("account/2fa/disable") { request, context -> Response in
            guard let user = ConsoleUser.current else { return Self.redirect("/login") }
            var request = request
            let password = try await FormBody.read(&request)["password"] ?? ""
            if try await accounts.requiresTwoFactor() {
                return try await accountPage(error: "Your administrators require two-factor sign-in; it cannot be turned off.")
            }
            guard try await PasswordPolicy.verify(password, hash: user.account.passwordHash) else {
                await audit.record(actor: user.actor, source: context.clientAddress, action: "two_factor.disable", outcome: "failed", detail: "wrong password")
                return try await accountPage(error: "The password is wrong.")
            }
            try await accounts.disableTwoFactor(user.account.name)
            await audit.record(actor: user.actor, source: context.clientAddress, action: "two_factor.disable", outcome: "ok")
            return try await accountPage(message: "Two-factor sign-in is off.")
        }
        router.post("account/password") { request, context -> Response in
            guard let user = ConsoleUser.current else { return Self.redirect("/login") }
            var request = request
            let form = try await FormBody.read(&request)
            guard try await PasswordPolicy.verify(form["current"] ?? "", hash: user.account.passwordHash) else {
                await audit.record(actor: user.actor, source: context.clientAddress, action: "password.change", outcome: "failed", detail: "wrong current password")
                return try await accountPage(error: "The current password is wrong.")
            }
            let new = form["new"] ?? ""
            if let problem = PasswordPolicy.problem(new, account: user.account.name) { return try await accountPage(error: "New password: \(problem).") }
            try await accounts.setPassword(user.account.name, new, keepingSession: user.session.idHash)
            await audit.record(actor: user.actor, source: context.clientAddress, action: "password.change", outcome: "ok", detail: "other sessions ended")
            return try await accountPage(message: "Password changed. Your other sessions were signed out.")
        }
        router.post("account/sessions/revoke") { request, context -> Response in
            guard let user = ConsoleUser.current else { return Self.redirect("/login") }
            var request = request
            let id = try await FormBody.read(&request)["session"] ?? ""
            // Only one of the person's own sessions.
            guard try await accounts.sessions(of: user.account.name).contains(where: { $0.idHash == id }) else {
                return try await accountPage(error: "No such session.")
            }
            try await accounts.deleteSession(id)
            await audit.record(actor: user.actor, source: context.clientAddress, action: "session.revoke", outcome: "ok", detail: String(id.prefix(8)))
            return try await accountPage(message: "That session was signed out.")
        }
    }

    private func accountPage(
        required: Bool = false, enrolling secret: String? = nil, recoveryCodes: [String]? = nil, message: String? = nil, error: String? = nil
    ) async throws -> Response {
        guard let user = ConsoleUser.current, let account = try await accounts.account(user.account.name) else { return Self.redirect("/login") }
        let formatter = ISO8601DateFormatter()
        let now = Date().timeIntervalSince1970
        var values: [String: Any] = [
            "account": account.name, "role": account.role.rawValue, "csrf": user.session.csrf, "twoFactor": account.twoFactor,
            "recoveryCodesLeft": account.recoveryCodesLeft, "mandatory": try await accounts.requiresTwoFactor(),
            "required": required && !account.twoFactor,
            "sessions": try await accounts.sessions(of: account.name).map { session -> [String: Any] in
                [
                    "id": session.idHash, "created": formatter.string(from: Date(timeIntervalSince1970: session.createdAt)),
                    "seen": Self.age(now - session.lastSeen), "address": session.address, "agent": String(session.userAgent.prefix(80)),
                    "current": session.idHash == user.session.idHash, "csrf": user.session.csrf,
                ]
            },
        ]
        if let secret {
            let url = TwoFactor.url(secret: secret, account: account.name)
            values["enrolling"] = true
            values["secret"] = TwoFactor.typedKey(secret: secret)
            values["qr"] = "data:image/png;base64," + Data(try QRCodeImage(encoding: url).png(scale: 4)).base64EncodedString()
        }
        if let recoveryCodes { values["recoveryCodes"] = ["codes": recoveryCodes] }
        if let message { values["message"] = message }
        if let error { values["error"] = error }
        return page("account", title: "Your account", values, status: error == nil ? .ok : .unprocessableContent)
    }
}
