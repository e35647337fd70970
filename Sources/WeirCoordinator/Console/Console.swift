import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import Prometheus

/// The web console at / of the coordinator's port: sign-in, sessions, and the pages. Pages read and change
/// the fleet through the same store and API code as /api/v1; every change and every refusal is audited.
struct Console: Sendable {
    let accounts: ConsoleStore
    let audit: AuditLog
    let api: CoordinatorAPI
    let settings: ConsoleSettings
    let templates: ConsoleTemplates
    let throttle: SignInThrottle
    let streams: LiveStreams
    let logger: Logger

    init(
        database: CoordinatorDatabase, secrets: SecretBox, api: CoordinatorAPI, settings: ConsoleSettings, logger: Logger,
        streamsGauge: Gauge? = nil
    ) throws {
        accounts = ConsoleStore(database: database, secrets: secrets)
        audit = AuditLog(database: database)
        self.api = api
        self.settings = settings
        templates = try ConsoleTemplates()
        throttle = SignInThrottle(limit: settings.addressLimit, window: settings.addressWindow.seconds)
        streams = LiveStreams(limit: 512, gauge: streamsGauge)
        self.logger = logger
    }

    /// Paths anyone may load: the sign-in page and the static files.
    static func isPublic(_ path: String) -> Bool { path == "/login" || path.hasPrefix("/assets/") }

    /// Paths the console does not serve (the API, the agents' endpoint, health and metrics).
    static func isConsolePath(_ path: String) -> Bool {
        !(path.hasPrefix("/api/") || path == "/healthz" || path == "/metrics")
    }

    func register(on router: Router<CoordinatorContext>) {
        router.get("assets/{name}") { _, context -> Response in
            guard let name = context.parameters.get("name"), let asset = ConsoleTemplates.assets[name] else { throw HTTPError(.notFound) }
            return Response(
                status: .ok, headers: [.contentType: asset.type, .cacheControl: "public, max-age=3600"],
                body: .init(byteBuffer: ByteBuffer(bytes: asset.bytes)))
        }
        router.get("login") { request, context in try await signInPage(request, context) }
        router.post("login") { request, context in try await signIn(request, context) }
        router.post("logout") { _, context in try await signOut(context) }
        router.get("login/2fa") { request, _ in secondFactorPage(request) }
        router.post("login/2fa") { request, context in try await secondFactor(request, context) }
        registerFleet(on: router)
        registerAccount(on: router)
        registerLists(on: router)
        registerAgent(on: router)
        registerPipelines(on: router)
        registerRelays(on: router)
        registerVPN(on: router)
        registerTraffic(on: router)
        registerAdministrators(on: router)
        registerAudit(on: router)
    }

    // MARK: - Pages

    /// A page in the layout, with the signed-in user's menu.
    func page(_ template: String, title: String, _ values: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        var context = values
        context["title"] = title
        if let user = ConsoleUser.current, user.session.stage == ConsoleSession.full {
            context["user"] = [
                "name": user.account.name, "role": user.account.role.rawValue, "csrf": user.session.csrf, "admin": user.account.role == .admin,
            ]
        }
        return html(templates.render(template, context), status: status)
    }

    func html(_ text: String, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var fields = headers
        fields[.contentType] = "text/html; charset=utf-8"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(string: text)))
    }

    func errorPage(_ status: HTTPResponse.Status, _ message: String) -> Response {
        page("error", title: status.reasonPhrase, ["heading": status.reasonPhrase, "message": message], status: status)
    }

    static func redirect(_ location: String, cookies: [String] = []) -> Response {
        var headers: HTTPFields = [.location: location]
        for cookie in cookies { headers.append(HTTPField(name: .setCookie, value: cookie)) }
        return Response(status: .seeOther, headers: headers)
    }

    /// Whether the signed-in user may change things (operators and admins): pages show their forms then.
    var userCanChange: Bool { ConsoleUser.current.map { $0.account.role != .viewer } ?? false }

    /// The signed-in user's role allows `role`'s work, or a 403 page (audited).
    func require(_ role: APIRole, _ what: String, context: CoordinatorContext) async -> Response? {
        guard let user = ConsoleUser.current else { return Self.redirect("/login") }
        let rank: [APIRole: Int] = [.viewer: 0, .operator: 1, .admin: 2]
        guard rank[user.account.role]! < rank[role]! else { return nil }
        await audit.record(
            actor: user.actor, source: context.clientAddress, action: what, outcome: "refused", detail: "role \(user.account.role.rawValue) < \(role.rawValue)")
        return errorPage(.forbidden, "Your role (\(user.account.role.rawValue)) cannot \(what); ask an administrator.")
    }

    // MARK: - Sign-in

    private func signInPage(_ request: Request, _ context: CoordinatorContext, error: String? = nil, name: String = "", status: HTTPResponse.Status = .ok)
        async throws -> Response
    {
        if error == nil, try await resolve(request) != nil { return Self.redirect("/") }
        let token = Secrets.make(prefix: "")
        let next = Self.safeNext(request.uri.queryParameters.get("next"))
        var values: [String: Any] = ["token": token, "next": next, "name": name]
        if let error { values["error"] = error }
        var response = page("login", title: "Sign in", values, status: status)
        response.headers.append(HTTPField(name: .setCookie, value: ConsoleCookie.set(ConsoleCookie.signIn, token, maxAge: 3600)))
        return response
    }

    /// A place to go after sign-in: a path of this site only (never `//host` or a URL).
    static func safeNext(_ next: String?) -> String {
        guard let next, next.hasPrefix("/"), !next.hasPrefix("//"), !next.contains("\\"), next.count < 512 else { return "/" }
        return next
    }

    private func signIn(_ request: Request, _ context: CoordinatorContext) async throws -> Response {
        var request = request
        let form = try await FormBody.read(&request)
        let name = (form["name"] ?? "").trimmingCharacters(in: .whitespaces).lowercased()
        let source = context.clientAddress
        let now = Date().timeIntervalSince1970
        // The form and the cookie set with it must agree (a page of another site cannot read the cookie), and
        // the browser must say the request comes from here.
        let expected = ConsoleCookie.read(ConsoleCookie.signIn, from: request) ?? ""
        if expected.isEmpty || CSRFCheck.problem(request, expectedToken: expected, formToken: form["token"]) != nil {
            await audit.record(actor: "login:\(name)", source: source, action: "sign_in", outcome: "refused", detail: "sign-in form token missing or wrong")
            return try await signInPage(request, context, error: "The sign-in form expired. Please try again.", name: name, status: .forbidden)
        }
        if let wait = throttle.retryAfter(source, now: now) {
            await audit.record(actor: "login:\(name)", source: source, action: "sign_in", outcome: "refused", detail: "too many failed sign-ins from this address")
            var response = try await signInPage(
                request, context, error: "Too many failed sign-ins from your address. Try again in \(Self.minutes(wait)).", name: name,
                status: .tooManyRequests)
            response.headers[.retryAfter] = "\(Int(wait.rounded(.up)))"
            return response
        }
        let account = try await accounts.account(name)
        let password = form["password"] ?? ""
        let matches = try await PasswordPolicy.verify(password, hash: account?.passwordHash)
        if let account, let lockedUntil = account.lockedUntil, lockedUntil > now {
            await audit.record(actor: "login:\(name)", source: source, action: "sign_in", outcome: "locked", detail: "account locked")
            return try await signInPage(
                request, context, error: "This account is locked after too many failed sign-ins. Try again in \(Self.minutes(lockedUntil - now)) or ask an administrator.",
                name: name, status: .forbidden)
        }
        guard let account, matches else {
            throttle.recordFailure(source, now: now)
            let locked = try await accounts.recordFailedLogin(name, limit: settings.lockoutAfter, lockUntil: now + settings.lockoutDuration.seconds)
            await audit.record(
                actor: "login:\(name)", source: source, action: "sign_in", outcome: locked ? "locked" : "failed",
                detail: locked ? "wrong password; account locked for \(Self.minutes(settings.lockoutDuration.seconds))" : "wrong account name or password")
            if locked { logger.notice("console account locked after failed sign-ins", metadata: ["account": "\(name)", "source": "\(source)"]) }
            return try await signInPage(request, context, error: "The account name or password is wrong.", name: name, status: .unauthorized)
        }
        let next = Self.safeNext(form["next"])
        if account.twoFactor {
            // The password was right; the session is good for the code page only, for five minutes.
            let (_, cookie) = try await accounts.createSession(
                account: account.name, address: source, userAgent: request.headers[.userAgent] ?? "", stage: ConsoleSession.secondFactor)
            await audit.record(actor: "account:\(account.name)", source: source, action: "sign_in.password", outcome: "ok", detail: "second factor asked")
            return Self.redirect(
                "/login/2fa?next=" + (next.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "%2F"),
                cookies: [ConsoleCookie.set(ConsoleCookie.session, cookie), ConsoleCookie.clear(ConsoleCookie.signIn)])
        }
        try await accounts.recordSuccessfulLogin(account.name)
        let (_, cookie) = try await accounts.createSession(
            account: account.name, address: source, userAgent: request.headers[.userAgent] ?? "")
        await audit.record(actor: "account:\(account.name)", source: source, action: "sign_in", outcome: "ok")
        return Self.redirect(next, cookies: [ConsoleCookie.set(ConsoleCookie.session, cookie), ConsoleCookie.clear(ConsoleCookie.signIn)])
    }

    private func secondFactorPage(_ request: Request, error: String? = nil, status: HTTPResponse.Status = .ok) -> Response {
        var values: [String: Any] = ["next": Self.safeNext(request.uri.queryParameters.get("next")), "csrf": ConsoleUser.current?.session.csrf ?? ""]
        if let error { values["error"] = error }
        return page("second_factor", title: "Two-factor sign-in", values, status: status)
    }

    /// The code after the password: a TOTP code (each usable once) or a recovery code. A wrong one counts as a
    /// failed sign-in (account lockout, address throttle); the right one replaces the half session by a new
    /// full one (a new id: nothing learned before the second factor is worth anything after it).
    private func secondFactor(_ request: Request, _ context: CoordinatorContext) async throws -> Response {
        guard let user = ConsoleUser.current, user.session.stage == ConsoleSession.secondFactor else { return Self.redirect("/") }
        var request = request
        let form = try await FormBody.read(&request)
        let source = context.clientAddress, name = user.account.name
        let now = Date().timeIntervalSince1970
        if let wait = throttle.retryAfter(source, now: now) {
            await audit.record(actor: user.actor, source: source, action: "sign_in.second_factor", outcome: "refused", detail: "too many failed sign-ins from this address")
            return secondFactorPage(request, error: "Too many failed sign-ins from your address. Try again in \(Self.minutes(wait)).", status: .tooManyRequests)
        }
        let code = (form["code"] ?? "").trimmingCharacters(in: .whitespaces)
        var how: String?
        if let secret = try await accounts.twoFactorSecret(name), let step = TwoFactor.matchingStep(secret: secret, code: code, time: now) {
            if try await accounts.useTwoFactorStep(name, step) { how = "TOTP" }
        } else if code.count > 6, let left = try await accounts.useRecoveryCode(name, code) {
            how = "a recovery code (\(left) left)"
        }
        guard let how else {
            throttle.recordFailure(source, now: now)
            let locked = try await accounts.recordFailedLogin(name, limit: settings.lockoutAfter, lockUntil: now + settings.lockoutDuration.seconds)
            await audit.record(
                actor: user.actor, source: source, action: "sign_in.second_factor", outcome: locked ? "locked" : "failed",
                detail: locked ? "wrong or used code; account locked" : "wrong or used code")
            if locked {
                try await accounts.deleteSession(user.session.idHash)
                return Self.redirect("/login", cookies: [ConsoleCookie.clear(ConsoleCookie.session)])
            }
            return secondFactorPage(request, error: "That code is wrong or was used already. Enter the current code from your app.", status: .unauthorized)
        }
        try await accounts.deleteSession(user.session.idHash)
        try await accounts.recordSuccessfulLogin(name)
        let (_, cookie) = try await accounts.createSession(account: name, address: source, userAgent: request.headers[.userAgent] ?? "")
        await audit.record(actor: user.actor, source: source, action: "sign_in", outcome: "ok", detail: "with \(how)")
        return Self.redirect(Self.safeNext(form["next"]), cookies: [ConsoleCookie.set(ConsoleCookie.session, cookie)])
    }

    private func signOut(_ context: CoordinatorContext) async throws -> Response {
        if let user = ConsoleUser.current {
            try await accounts.deleteSession(user.session.idHash)
            await audit.record(actor: user.actor, source: context.clientAddress, action: "sign_out", outcome: "ok")
        }
        return Self.redirect("/login", cookies: [ConsoleCookie.clear(ConsoleCookie.session)])
    }

    static func minutes(_ seconds: Double) -> String {
        let minutes = Int((seconds / 60).rounded(.up))
        return minutes <= 1 ? "a minute" : "\(minutes) minutes"
    }

    // MARK: - Sessions

    /// The request's session and account when the session is valid: not idle longer than the idle timeout,
    /// not older than its lifetime, its account still there. An expired session is removed.
    func resolve(_ request: Request, touch: Bool = false) async throws -> ConsoleUser? {
        guard let cookie = ConsoleCookie.read(ConsoleCookie.session, from: request), !cookie.isEmpty,
            let session = try await accounts.session(cookie: cookie)
        else { return nil }
        return try await validate(session, touch: touch)
    }

    /// `session` still valid (see `resolve`); live streams ask again with the session they started with.
    func validate(_ session: ConsoleSession, touch: Bool) async throws -> ConsoleUser? {
        let now = Date().timeIntervalSince1970
        let lifetime = session.stage == ConsoleSession.full ? settings.sessionLifetime.seconds : TwoFactor.pendingLifetime
        guard now - session.lastSeen < settings.sessionIdleTimeout.seconds, now - session.createdAt < lifetime,
            let account = try await accounts.account(session.account)
        else {
            try await accounts.deleteSession(session.idHash)
            return nil
        }
        var current = session
        // Written at most once a minute (a page view is not a database write), and often enough that a
        // session in use never reaches its idle timeout.
        if touch, now - session.lastSeen > min(60, settings.sessionIdleTimeout.seconds / 4) {
            try await accounts.touchSession(session.idHash, at: now)
            current.lastSeen = now
        }
        return ConsoleUser(account: account, session: current)
    }
}

/// Requires a valid session for every console page except the public ones (else: to the sign-in page, or
/// 401 for a script), and the CSRF checks for every request that is not GET or HEAD. Runs the handler with
/// `ConsoleUser.current` set.
struct ConsoleSessionMiddleware: RouterMiddleware {
    typealias Context = CoordinatorContext
    let console: Console

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        guard Console.isConsolePath(path), !Console.isPublic(path) else { return try await next(request, context) }
        guard let user = try await console.resolve(request, touch: true) else {
            if request.method == .get, !path.hasSuffix("/events") {
                let target = request.uri.string == "/" ? "/login" : "/login?next=" + (request.uri.string.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")
                return Console.redirect(target)
            }
            return Response(status: .unauthorized, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "signed out\n")))
        }
        // Half signed in (the code is still to come): the code page and sign-out only. Signed in without a
        // second factor while administrators require one: the account page (to set it up) and sign-out only.
        if user.session.stage != ConsoleSession.full, path != "/login/2fa", path != "/logout" {
            return Console.redirect("/login/2fa")
        }
        if user.session.stage == ConsoleSession.full, !user.account.twoFactor, !path.hasPrefix("/account"), path != "/logout",
            try await console.accounts.requiresTwoFactor()
        {
            return Console.redirect("/account?required=1")
        }
        var request = request
        if request.method != .get, request.method != .head {
            let formToken = request.headers[.contentType]?.hasPrefix("application/x-www-form-urlencoded") == true
                ? try await FormBody.read(&request)["csrf"] : nil
            if let problem = CSRFCheck.problem(request, expectedToken: user.session.csrf, formToken: formToken) {
                await console.audit.record(
                    actor: user.actor, source: context.clientAddress, action: "\(request.method) \(path)", outcome: "refused", detail: problem)
                return ConsoleUser.$current.withValue(user) {
                    console.errorPage(.forbidden, "This request was refused (\(problem)). Reload the page and try again.")
                }
            }
        }
        return try await ConsoleUser.$current.withValue(user) { try await next(request, context) }
    }
}
