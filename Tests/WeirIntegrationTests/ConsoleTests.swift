import Foundation
import Testing

/// The web console's security, against a real coordinator with curl as the browser: sign-in, cookies,
/// headers, CSRF, throttling and lockout, roles, sessions' end, and the audit trail of all of it.
@Suite("web console: sign-in, sessions, CSRF, roles and audit", .serialized)
struct ConsoleTests {
    static func audit(_ coordinator: CoordinatorProcess, _ client: ConsoleClient, _ query: String = "") throws -> String {
        try client.get("/audit.csv" + query).body
    }

    @Test("first start: an admin whose password is in a 0600 file (not the log); sign-in sets a __Host- session; headers on every page; sign-out ends the session")
    func signInAndOut() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let passwordFile = coordinator.directory.appendingPathComponent("state/console-admin.password").path
        let mode = try FileManager.default.attributesOfItem(atPath: passwordFile)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let password = coordinator.consoleAdminPassword
        #expect(password.count >= 20)
        #expect(!coordinator.log.contains(password), "the password is never logged")

        let browser = ConsoleClient(coordinator)
        // Signed out: every page leads to the sign-in page, which carries the strict headers.
        let home = try browser.get("/")
        #expect(home.status == 303 && home.headers["location"] == "/login", "\(home)")
        let audit = try browser.get("/audit?actor=x")
        #expect(audit.status == 303 && audit.headers["location"]?.hasPrefix("/login?next=") == true)
        let login = try browser.get("/login")
        #expect(login.status == 200)
        for page in [home, login, try browser.get("/api/v1/openapi.json"), try browser.get("/assets/console.css")] {
            #expect(page.headers["content-security-policy"]?.contains("script-src 'self'") == true)
            #expect(page.headers["content-security-policy"]?.contains("frame-ancestors 'none'") == true)
            #expect(page.headers["strict-transport-security"]?.hasPrefix("max-age=") == true)
            #expect(page.headers["x-content-type-options"] == "nosniff")
            #expect(page.headers["referrer-policy"] != nil)
        }

        let wrong = try browser.signIn("admin", password + "x")
        #expect(wrong.status == 401 && wrong.body.contains("The account name or password is wrong."))
        let signedIn = try browser.signIn("admin", password, next: "/audit")
        #expect(signedIn.status == 303 && signedIn.headers["location"] == "/audit", "\(signedIn)")
        let cookie = try #require(signedIn.cookies.first { $0.hasPrefix("__Host-weir_session=") })
        for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] { #expect(cookie.contains(attribute), "\(cookie)") }
        let id = cookie.dropFirst("__Host-weir_session=".count).prefix { $0 != ";" }
        #expect(id.count >= 22, "at least 128 random bits")
        #expect(!((try? String(contentsOfFile: coordinator.directory.path + "/state/coordinator.db-wal", encoding: .isoLatin1)) ?? "").contains(String(id)),
                "the database keeps the session id's hash only")
        let fleet = try browser.get("/")
        #expect(fleet.status == 200 && fleet.body.contains("No agents yet"), "\(fleet.body)")
        #expect(fleet.body.contains("<a class=\"account\" href=\"/account\">admin</a>"))
        // A session cookie another client copies works for it too — but not after sign-out.
        let token = try #require(fleet.field("csrf-token"))
        let out = try browser.post("/logout", csrf: token)
        #expect(out.status == 303 && out.headers["location"] == "/login")
        #expect(try browser.request("GET", "/", headers: ["Cookie: __Host-weir_session=\(id)"], useCookies: false).status == 303)

        let admin = ConsoleClient(coordinator)
        try admin.signIn("admin", password)
        let trail = try Self.audit(coordinator, admin)
        #expect(trail.contains("login:admin,127.0.0.1,sign_in,failed"), "\(trail)")
        #expect(trail.contains("account:admin,127.0.0.1,sign_in,ok"))
        #expect(trail.contains("account:admin,127.0.0.1,sign_out,ok"))
    }

    @Test("CSRF: a state change without the session's token, from another Origin or cross-site is refused (403) and audited; the sign-in form needs its own token")
    func csrf() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        let token = try browser.csrfToken()
        #expect(!token.isEmpty)
        #expect(try browser.post("/logout").status == 403, "no token")
        #expect(try browser.post("/logout", csrf: "x" + token.dropFirst()).status == 403, "wrong token")
        #expect(try browser.post("/logout", csrf: token, origin: "https://evil.example").status == 403, "another origin")
        #expect(try browser.post("/logout", csrf: token, headers: ["Sec-Fetch-Site: cross-site"]).status == 403, "cross-site")
        #expect(try browser.get("/").status == 200, "still signed in: nothing was changed")
        // A GET changes nothing: /logout by GET is not a sign-out.
        #expect(try browser.get("/logout").status != 303)
        #expect(try browser.get("/").status == 200)
        // The sign-in form: without its token, or with one that does not match the cookie set with the form.
        let stranger = ConsoleClient(coordinator)
        #expect(try stranger.post("/login", ["name": "admin", "password": coordinator.consoleAdminPassword]).status == 403)
        _ = try stranger.get("/login")
        #expect(try stranger.post("/login", ["name": "admin", "password": coordinator.consoleAdminPassword, "token": "forged"]).status == 403)
        #expect(try stranger.get("/").status == 303, "not signed in")
        let trail = try Self.audit(coordinator, browser, "?outcome=refused")
        #expect(trail.contains("POST /logout,refused,missing or wrong CSRF token"), "\(trail)")
        #expect(trail.contains("request from another origin (https://evil.example)"))
        #expect(trail.contains("cross-site request (Sec-Fetch-Site: cross-site)"))
        #expect(trail.contains("sign-in form token missing or wrong"))
        #expect(try browser.post("/logout", csrf: token).status == 303, "with the token it works")
    }

    @Test("lockout: five wrong passwords lock the account (the right one is refused too); twenty failures lock out the address; all audited")
    func lockoutAndThrottle() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI(), settings: ["console: {lockout_after: 5, lockout_duration: 1h}"])
        try coordinator.start()
        defer { coordinator.stop() }
        let created = try coordinator.createConsoleAccount("alice", role: "operator", password: "a long passphrase for alice's tests")
        #expect(created.status != 0, "the account name in the password is refused: \(created.output)")
        #expect(created.output.contains("may not contain the account name"))
        let weak = try coordinator.createConsoleAccount("alice", role: "operator", password: "password1234")
        #expect(weak.status != 0 && weak.output.contains("common password"), "\(weak.output)")
        let made = try coordinator.createConsoleAccount("alice", role: "operator", password: "violet tractor mountain 42")
        #expect(made.status == 0, "\(made.output)")

        let browser = ConsoleClient(coordinator)
        for _ in 0..<5 { #expect(try browser.signIn("alice", "not the password at all").status == 401) }
        let locked = try browser.signIn("alice", "violet tractor mountain 42")
        #expect(locked.status == 403 && locked.body.contains("This account is locked"), "\(locked.body)")
        let listed = try command([WeirProcess.binary, "coordinator", "admin", "list", "--config", coordinator.configPath])
        #expect(listed.output.contains("alice\toperator\tlocked"), "\(listed.output)")
        // The address: 20 failures in 10 minutes (5 so far, plus the refused one which is not a failure).
        for index in 0..<15 { #expect(try browser.signIn("nobody\(index)", "whatever whatever").status == 401) }
        let throttled = try browser.signIn("admin", coordinator.consoleAdminPassword)
        #expect(throttled.status == 429 && throttled.headers["retry-after"] != nil, "\(throttled.status) \(throttled.body)")
        #expect(throttled.body.contains("Too many failed sign-ins from your address"))

        // The trail, through the API (the address may not sign in now).
        let entries = try #require(try coordinator.admin("GET", "/api/v1/audit?action=sign_in&limit=1000") as? [[String: Any]])
        let lines = entries.map { "\($0["actor"]!)|\($0["outcome"]!)|\($0["detail"]!)" }
        #expect(lines.contains { $0.hasPrefix("login:alice|locked|wrong password; account locked for") }, "\(lines)")
        #expect(lines.contains("login:alice|locked|account locked"))
        #expect(lines.contains("login:admin|refused|too many failed sign-ins from this address"))
        #expect(lines.filter { $0.contains("|failed|") }.count == 19, "\(lines)")
        #expect(try coordinator.admin("GET", "/api/v1/audit?outcome=locked&limit=1") is [[String: Any]])
    }

    @Test("roles: a viewer sees the fleet but not the audit trail (403, audited); API writes are audited with the token's name; the CSV export has them")
    func rolesAndAPIAudit() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        #expect(try coordinator.createConsoleAccount("vera", role: "viewer", password: "seven orange kites at dawn").status == 0)
        let viewer = ConsoleClient(coordinator)
        #expect(try viewer.signIn("vera", "seven orange kites at dawn").status == 303)
        #expect(try viewer.get("/").status == 200)
        let refused = try viewer.get("/audit")
        #expect(refused.status == 403 && refused.body.contains("Your role (viewer) cannot read the audit log"), "\(refused.body)")
        #expect(try viewer.get("/audit.csv").status == 403)

        // API: a write by the admin token, one refused for a viewer token.
        try coordinator.admin("PUT", "/api/v1/lists/allowed", json: ["entries": ["example.org"]])
        let created = try coordinator.admin("POST", "/api/v1/tokens", json: ["name": "dashboards", "role": "viewer"]) as? [String: Any]
        let viewerToken = try #require(created?["token"] as? String)
        let (status, _) = try coordinator.request("DELETE", "/api/v1/lists/allowed", token: viewerToken)
        #expect(status == 403)
        #expect(try coordinator.request("GET", "/api/v1/agents", token: "weir_api_wrong").0 == 401)

        // Lists: a viewer reads them, without the forms, and cannot change them.
        let listPage = try viewer.get("/lists/allowed")
        #expect(listPage.status == 200 && listPage.body.contains("example.org") && !listPage.body.contains("add-entries"))
        #expect(try viewer.post("/lists/allowed/add", ["entries": "other.example.org"], csrf: try viewer.csrfToken()).status == 403)
        #expect(try viewer.post("/agents/any/revoke", csrf: try viewer.csrfToken()).status == 403)
        #expect(try viewer.get("/agents/none").status == 404)

        let admin = ConsoleClient(coordinator)
        try admin.signIn("admin", coordinator.consoleAdminPassword)
        let csv = try admin.get("/audit.csv")
        #expect(csv.headers["content-type"]?.hasPrefix("text/csv") == true)
        #expect(csv.headers["content-disposition"]?.contains("attachment") == true)
        #expect(csv.body.hasPrefix("time,actor,source,action,outcome,detail\r\n"))
        #expect(csv.body.contains("token:bootstrap-admin,127.0.0.1,PUT /api/v1/lists/allowed,ok,201: created (destinations): added: example.org (0 → 1 entries)"), "\(csv.body)")
        #expect(csv.body.contains("account:vera,127.0.0.1,change lists,refused,role viewer < operator"))
        #expect(csv.body.contains("token:bootstrap-admin,127.0.0.1,POST /api/v1/tokens,ok,201"))
        #expect(csv.body.contains("token:dashboards,127.0.0.1,DELETE /api/v1/lists/allowed,refused,\"403: token \"\"dashboards\"\" has role viewer"))
        let viewerAudit = try coordinator.request("GET", "/api/v1/audit", token: viewerToken)
        #expect(viewerAudit.0 == 403, "viewers read no audit trail through the API either")
        #expect(csv.body.contains("token:?,127.0.0.1,GET /api/v1/agents,refused,401"))
        #expect(csv.body.contains("account:vera,127.0.0.1,read the audit log,refused,role viewer < operator"))
        // The page filters on the server.
        let page = try admin.get("/audit?outcome=refused&actor=account%3Avera")
        #expect(page.body.contains("read the audit log") && !page.body.contains("PUT /api/v1/lists/allowed"))
        #expect(!csv.body.contains(coordinator.adminToken), "no secret in the trail")
    }

    @Test("hostile requests: an oversized form (413), broken percent-encoding, junk and forged cookies, a session cookie of another length — refused, and the console keeps answering")
    func hostileRequests() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        let stranger = ConsoleClient(coordinator)
        _ = try stranger.get("/login")
        #expect(try stranger.post("/login", ["name": "admin", "password": String(repeating: "x", count: 70_000)]).status == 413)
        #expect(try stranger.request("POST", "/login", form: [:], headers: ["Content-Type: application/x-www-form-urlencoded"]).status == 403)
        let garbled = try command([
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", coordinator.pki.caPath, "--data-binary", "%%%&&=&name=%zz&token=%",
            "-H", "Content-Type: application/x-www-form-urlencoded", coordinator.url + "/login",
        ])
        #expect(garbled.output == "403")
        for cookie in ["__Host-weir_session=", "__Host-weir_session=;;;===", "__Host-weir_session=\(String(repeating: "A", count: 4000))", "=; ; =x"] {
            let page = try stranger.request("GET", "/", headers: ["Cookie: \(cookie)"], useCookies: false)
            #expect(page.status == 303 && page.headers["location"] == "/login", "\(cookie.prefix(40)): \(page.status)")
            #expect(try stranger.request("POST", "/logout", form: [:], headers: ["Cookie: \(cookie)"], useCookies: false).status == 401)
        }
        #expect(try stranger.get("/fleet/events").status == 401, "no live stream without a session")
        let browser = ConsoleClient(coordinator)
        #expect(try browser.signIn("admin", coordinator.consoleAdminPassword).status == 303)
        #expect(try browser.get("/").status == 200)
        // One session holds at most 8 live streams (each a connection the coordinator keeps); the 9th is
        // refused at once, and closed streams free their places (noticed at the stream's next write).
        #expect(try browser.streams("/fleet/events", count: 9, seconds: 3) == Array(repeating: 200, count: 8) + [429])
        // Open streams are a gauge: back to 0 once the coordinator has noticed the clients gone.
        #expect(eventually(timeout: 10) {
            value(in: (try? coordinator.request("GET", "/metrics", token: nil).1) ?? "", "weir_coordinator_console_live_streams", [:]) == 0
        })
        #expect(try browser.streams("/pipelines/none/events", count: 8, seconds: 1) == Array(repeating: 200, count: 8))
        #expect(try ConsoleClient(coordinator).signIn("admin", coordinator.consoleAdminPassword).status == 303, "another session has its own 8")
    }

    @Test("sessions end when idle longer than the idle timeout, and at their lifetime however used")
    func sessionTimeouts() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI(), settings: ["console: {session_idle_timeout: 2s, session_lifetime: 5s}"])
        try coordinator.start()
        defer { coordinator.stop() }
        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        // Used every second: the idle timeout never passes, the lifetime does.
        var signedIn = 0
        for _ in 0..<7 {
            if try browser.get("/").status == 200 { signedIn += 1 }
            sleep(1)
        }
        #expect((3...5).contains(signedIn), "\(signedIn) of 7 seconds")
        #expect(try browser.get("/").status == 303)
        // Left alone past the idle timeout.
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        #expect(try browser.get("/").status == 200)
        sleep(3)
        #expect(try browser.get("/").status == 303)
    }

    /// The key the account page shows while two-factor sign-in is being set up.
    static func totpKey(_ page: String) -> String? {
        page.range(of: "id=\"totp-secret\">[A-Z2-7]+<", options: .regularExpression).map {
            String(page[$0].dropFirst("id=\"totp-secret\">".count).dropLast())
        }
    }

    /// A TOTP code of `key` (base32, as the account page shows it) for the 30 s step `offset` steps from now, by pyotp.
    static func totp(_ key: String, offset: Int = 0) throws -> String {
        try command(["/usr/bin/python3", "-c", "import pyotp, time; print(pyotp.TOTP('\(key)').at(time.time() + \(offset * 30)))"]).output
            .trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("two-factor: enrolment by QR code (decoded with zbarimg) and a code; sign-in asks for a code, each usable once; recovery codes once; the half session sees nothing else")
    func twoFactor() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        let password = coordinator.consoleAdminPassword
        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", password)
        var csrf = try browser.csrfToken()
        let setup = try browser.post("/account/2fa/start", csrf: csrf)
        let key = try #require(Self.totpKey(setup.body))
        // The QR code holds the otpauth URL with the same key.
        let image = try #require(setup.body.range(of: "data:image/png;base64,[A-Za-z0-9+/=]+", options: .regularExpression))
        let png = try #require(Data(base64Encoded: String(setup.body[image].dropFirst("data:image/png;base64,".count))))
        let file = coordinator.directory.appendingPathComponent("qr.png")
        try png.write(to: file)
        // (zbarimg may say first that it found no D-Bus; the URL is its own line.)
        let decoded = try command(["zbarimg", "--raw", "-q", file.path]).output.split(separator: "\n").filter { $0.hasPrefix("otpauth://") }
        #expect(decoded == ["otpauth://totp/Weir:admin?secret=\(key)&issuer=Weir"], "\(decoded)")

        #expect(try browser.post("/account/2fa/confirm", ["code": "000000"], csrf: csrf).body.contains("That code does not match"))
        let enrolCode = try Self.totp(key)
        let enabled = try browser.post("/account/2fa/confirm", ["code": enrolCode], csrf: csrf)
        let codes = enabled.body.components(separatedBy: "<li><code>").dropFirst().map { String($0.prefix { $0 != "<" }) }
        #expect(codes.count == 10 && codes.allSatisfy { $0.count == 14 }, "\(codes)")
        #expect(try browser.get("/account").body.contains("On. 10 recovery codes left."))
        #expect(try browser.post("/logout", csrf: csrf).status == 303)

        // Password first: a half session, good for the code page only.
        let half = try browser.signIn("admin", password)
        #expect(half.status == 303 && half.headers["location"]?.hasPrefix("/login/2fa") == true, "\(half)")
        #expect(try browser.get("/").headers["location"] == "/login/2fa")
        #expect(try browser.get("/account").headers["location"] == "/login/2fa")
        let codePage = try browser.get("/login/2fa")
        csrf = try #require(codePage.field("csrf"))
        let reused = try browser.post("/login/2fa", ["code": enrolCode], csrf: csrf)
        #expect(reused.status == 401 && reused.body.contains("was used already"), "the code used to enrol works once")
        let signedIn = try browser.post("/login/2fa", ["code": try Self.totp(key, offset: 1), "next": "/audit"], csrf: csrf)
        #expect(signedIn.status == 303 && signedIn.headers["location"] == "/audit")
        #expect(try browser.get("/").status == 200)
        csrf = try browser.csrfToken()
        #expect(try browser.post("/logout", csrf: csrf).status == 303)

        // A recovery code signs in once.
        for attempt in 0..<2 {
            try browser.signIn("admin", password)
            let token = try #require(try browser.get("/login/2fa").field("csrf"))
            let answer = try browser.post("/login/2fa", ["code": codes[0].uppercased()], csrf: token)
            #expect(answer.status == (attempt == 0 ? 303 : 401), "attempt \(attempt): \(answer.status)")
            if attempt == 0 { #expect(try browser.post("/logout", csrf: try browser.csrfToken()).status == 303) }
        }
        let admin = ConsoleClient(coordinator)
        try admin.signIn("admin", password)
        let code = try #require(try admin.get("/login/2fa").field("csrf"))
        #expect(try admin.post("/login/2fa", ["code": codes[1]], csrf: code).status == 303)
        #expect(try admin.get("/account").body.contains("On. 8 recovery codes left."))
        let trail = try Self.audit(coordinator, admin)
        #expect(trail.contains("account:admin,127.0.0.1,sign_in,ok,with TOTP"), "\(trail)")
        #expect(trail.contains("account:admin,127.0.0.1,sign_in,ok,with a recovery code (9 left)"))
        #expect(trail.contains("account:admin,127.0.0.1,sign_in.second_factor,failed,wrong or used code"))
        #expect(trail.contains("account:admin,127.0.0.1,two_factor.enable,ok"))
        #expect(!trail.contains(key) && !trail.contains(codes[2]), "no secret in the trail")
    }

    @Test("administrators: accounts made, demoted, deleted (their sessions end) on the page; two-factor required for everyone; a password change ends the other sessions")
    func administrators() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        let password = coordinator.consoleAdminPassword
        let admin = ConsoleClient(coordinator)
        try admin.signIn("admin", password)
        let csrf = try admin.csrfToken()
        #expect(try admin.get("/administrators").body.contains("data-account=\"admin\""))
        let made = try admin.post("/administrators/create", ["name": "victor", "role": "viewer", "password": ""], csrf: csrf)
        let generated = try #require(made.body.range(of: "id=\"created-password\">[^<]+<", options: .regularExpression).map {
            String(made.body[$0].dropFirst("id=\"created-password\">".count).dropLast())
        })
        #expect(try admin.post("/administrators/create", ["name": "weak", "role": "viewer", "password": "password123456"], csrf: csrf).body
            .contains("Account not created"))
        let victor = ConsoleClient(coordinator)
        #expect(try victor.signIn("victor", generated).status == 303)
        #expect(try victor.get("/administrators").status == 403, "viewers do not manage accounts")
        #expect(try victor.post("/administrators/delete", ["name": "admin"], csrf: try victor.csrfToken()).status == 403)
        #expect(try admin.post("/administrators/delete", ["name": "admin"], csrf: csrf).body.contains("You cannot delete your own account"))

        // Everyone must use two-factor — the admin who requires it first (else the page refuses).
        #expect(try admin.post("/administrators/two-factor", ["required": "true"], csrf: csrf).body.contains("Set up your own two-factor sign-in first"))
        let adminKey = try #require(Self.totpKey(try admin.post("/account/2fa/start", csrf: csrf).body))
        #expect(try admin.post("/account/2fa/confirm", ["code": try Self.totp(adminKey)], csrf: csrf).body.contains("recovery-codes"))
        #expect(try admin.post("/administrators/two-factor", ["required": "true"], csrf: csrf).body.contains("required for every account"))
        // victor can reach only his account page until he sets it up.
        #expect(try victor.get("/").headers["location"] == "/account?required=1")
        #expect(try victor.get("/account?required=1").body.contains("Your administrators require two-factor sign-in"))
        let victorCSRF = try #require(try victor.get("/account").field("csrf"))
        let setup = try victor.post("/account/2fa/start", csrf: victorCSRF)
        let key = try #require(Self.totpKey(setup.body))
        #expect(try victor.post("/account/2fa/confirm", ["code": try Self.totp(key)], csrf: victorCSRF).body.contains("recovery-codes"))
        #expect(try victor.get("/").status == 200, "set up: the fleet again")
        #expect(try victor.post("/account/2fa/disable", ["password": generated], csrf: victorCSRF).body.contains("cannot be turned off"))

        // A role change applies at the next request; deleting an account ends its sessions.
        #expect(try victor.get("/audit").status == 403)
        #expect(try admin.post("/administrators/role", ["name": "victor", "role": "operator"], csrf: csrf).body.contains("victor is now operator"))
        #expect(try victor.get("/audit").status == 200)
        #expect(try admin.post("/administrators/delete", ["name": "victor"], csrf: csrf).body.contains("victor was deleted"))
        #expect(try victor.get("/").status == 303)
        #expect(try admin.post("/administrators/two-factor", ["required": "false"], csrf: csrf).body.contains("optional"))

        // A password change keeps this session and ends the others.
        let other = ConsoleClient(coordinator)
        try other.signIn("admin", password)
        let otherCSRF = try #require(try other.get("/login/2fa").field("csrf"))
        #expect(try other.post("/login/2fa", ["code": try Self.totp(adminKey, offset: 1)], csrf: otherCSRF).status == 303)
        #expect(try other.get("/").status == 200)
        let weak = try admin.post("/account/password", ["current": password, "new": "short"], csrf: csrf)
        #expect(weak.body.contains("at least 12 characters"))
        let changed = try admin.post("/account/password", ["current": password, "new": "granite owl sings at noon"], csrf: csrf)
        #expect(changed.body.contains("Password changed"), "\(changed.body)")
        #expect(try admin.get("/").status == 200 && other.get("/").status == 303)
        #expect(try ConsoleClient(coordinator).signIn("admin", password).status == 401)
        #expect(try ConsoleClient(coordinator).signIn("admin", "granite owl sings at noon").status == 303)
        let trail = try Self.audit(coordinator, admin)
        for line in ["account.create victor,ok,role viewer", "account.role victor,ok,viewer -> operator", "policy.two_factor,ok,required for every account", "account.delete victor,ok",
                     "password.change,ok,other sessions ended", "account:victor,127.0.0.1,manage console accounts,refused"] {
            #expect(trail.contains(line), "\(line)\n\(trail)")
        }
    }

    @Test("traffic history: heartbeats become per-minute history in the database; the CSV's rows add up to the agent's own counters; the chart is SVG")
    func trafficHistory() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        let echo = try Backends.echo()
        let port = freePort()
        let agent = try CoordinatorTests.managedAgent(
            "trafficker", coordinator: coordinator, token: try coordinator.enrollmentToken(), labels: [:],
            pipelines: CoordinatorTests.forward("fwd", port: port, to: echo.port))
        defer { agent.stop() }
        for _ in 0..<5 { #expect(CoordinatorTests.echoes(port)) }
        // The agent's own counters, as its heartbeats report them, once they stop moving.
        func reported() throws -> (Double, Double) {
            let report = try coordinator.admin("GET", "/api/v1/agents/trafficker/traffic") as? [String: [String: Any]]
            return ((report?["fwd"]?["bytes_in"] as? Double) ?? 0, (report?["fwd"]?["bytes_out"] as? Double) ?? 0)
        }
        var counters = try reported()
        for _ in 0..<40 {
            usleep(500_000)
            let now = try reported()
            if now == counters, now.0 >= 5 * 4096 { break }
            counters = now
        }
        #expect(counters.0 >= 5 * 4096 && counters.1 >= 5 * 4096, "\(counters)")
        usleep(1_200_000)  // another heartbeat or two: nothing more to add

        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        // The CSV against the counters read just before and just after it (a late heartbeat moves both).
        var matched = false
        var last = ""
        for _ in 0..<10 where !matched {
            let before = try reported()
            let csv = try browser.get("/traffic.csv?range=1h&agent=trafficker")
            let after = try reported()
            #expect(csv.headers["content-type"]?.hasPrefix("text/csv") == true)
            let rows = csv.body.split(separator: "\r\n").dropFirst().map { $0.split(separator: ",").map(String.init) }
            #expect(!rows.isEmpty && rows.allSatisfy { $0.count == 7 && $0[1] == "60" && $0[2] == "trafficker" && $0[3] == "fwd" }, "\(csv.body)")
            let sums = (rows.reduce(0.0) { $0 + (Double($1[4]) ?? 0) }, rows.reduce(0.0) { $0 + (Double($1[5]) ?? 0) })
            matched = before == after && sums == after
            last = "CSV \(sums) vs the agent's \(before) / \(after)"
            if !matched { usleep(300_000) }
        }
        #expect(matched, "\(last)")
        counters = try reported()
        // The day and year views count the same bytes.
        for range in ["24h", "365d"] {
            let total = try browser.get("/traffic.csv?range=\(range)").body.split(separator: "\r\n").dropFirst()
                .reduce(0.0) { $0 + (Double($1.split(separator: ",")[4]) ?? 0) }
            #expect(total == counters.0, "\(range)")
        }
        // The fleet row's sparkline: 30 minutes; the traffic of the last minute or two (the test may cross a
        // minute) reaches the top, the minutes before it are at the bottom.
        let fleet = try browser.get("/")
        let points = try #require(fleet.body.firstMatch(of: /<polyline points="([^"]*)"/)).1.split(separator: " ").map { $0.split(separator: ",") }
        #expect(points.count == 30, "\(points)")
        #expect(points.suffix(2).contains { $0[1] == "1.0" } && points.dropLast(2).allSatisfy { $0[1] == "17.0" }, "\(points)")
        #expect(fleet.body.contains("<title>last 30 min, per minute: peak "))
        // The agent's page: its chart over the chosen range, each pipeline a link to its own.
        let agentPage = try browser.get("/agents/trafficker?range=24h")
        #expect(agentPage.body.contains("src=\"/traffic.svg?range=24h&amp;agent=trafficker\""), "\(agentPage.body)")
        #expect(agentPage.body.contains("href=\"/traffic?range=24h&amp;agent=trafficker&amp;pipeline=fwd\""))
        let page = try browser.get("/traffic?agent=trafficker")
        #expect(page.status == 200 && page.body.contains("<td>fwd</td>"), "\(page.body)")
        let chart = try browser.get("/traffic.svg?range=1h")
        #expect(chart.headers["content-type"] == "image/svg+xml" && chart.body.hasPrefix("<svg") && chart.body.contains("<polyline"))
    }

    @Test("a push from the document page: the preview names the agents a change reaches and shows the diff; the rollout shows each agent pending, then its ACK, or its NACK with the error, live")
    func pushRollout() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken(labels: ["role": "edge"], uses: 2)
        let a = try CoordinatorTests.managedAgent("push-a", coordinator: coordinator, token: token, labels: [:])
        let b = try CoordinatorTests.managedAgent("push-b", coordinator: coordinator, token: token, labels: [:])
        defer { a.stop(); b.stop() }
        #expect(eventually(timeout: 10) { CoordinatorTests.inSync(coordinator, "push-a") && CoordinatorTests.inSync(coordinator, "push-b") })
        let echo = try Backends.echo()
        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        let csrf = try browser.csrfToken()

        // A new document: the preview says it reaches nobody yet; saving and assigning it to the label group.
        let first = CoordinatorTests.forward("edge-fwd", port: 0, to: echo.port)
        let newPreview = try browser.post("/pipelines/edge/preview", ["document": first], csrf: csrf)
        #expect(newPreview.status == 200 && newPreview.body.contains("A new document: it reaches no agent until you assign it."), "\(newPreview.body)")
        #expect(try browser.post("/pipelines/edge/save", ["document": first], csrf: csrf).status == 200)
        let assigned = try browser.post("/pipelines/edge/assign", ["selector": "role=edge"], csrf: csrf)
        #expect(assigned.status == 200 && assigned.body.contains("Assigned."))
        #expect(eventually(timeout: 5) {
            let page = (try? browser.get("/pipelines/edge").body) ?? ""
            return page.contains("2 agents: 2 applied · 0 pending · 0 refused") && page.components(separatedBy: "applied (ACK)").count == 3
        }, "\((try? browser.get("/pipelines/edge").body) ?? "")")

        // A change: the preview lists both agents with their bundle versions before and after, and the diff of
        // the line that changes; nothing is saved by a preview.
        let taken = try TCPListener()
        let second = first.replacingOccurrences(of: "127.0.0.1:0", with: "127.0.0.1:\(taken.port)")
        let preview = try browser.post("/pipelines/edge/preview", ["document": second], csrf: csrf)
        #expect(preview.status == 200)
        #expect(preview.body.contains("Saving changes the bundle of 2 agents: pipelines/edge.yaml in each"), "\(preview.body)")
        for id in ["push-a", "push-b"] { #expect(preview.body.contains("<tr data-agent=\"\(id)\"><td class=\"id\">\(id)</td>")) }
        #expect(preview.body.contains("<tr class=\"removed\"><td class=\"number\">5</td><td class=\"number\"></td><td><code>        address: 127.0.0.1:0</code>"))
        #expect(preview.body.contains("<tr class=\"added\"><td class=\"number\"></td><td class=\"number\">5</td><td><code>        address: 127.0.0.1:\(taken.port)</code>"))
        #expect(preview.body.contains("1 line removed, 1 added"))
        #expect(try coordinator.admin("GET", "/api/v1/pipelines/edge") as? [String: Any] != nil)
        #expect(((try coordinator.admin("GET", "/api/v1/pipelines/edge") as? [String: Any])?["document"] as? String) == first, "a preview saves nothing")
        // An invalid draft: the preview says so, with the validator's message at its line.
        let invalid = try browser.post("/pipelines/edge/preview", ["document": first.replacingOccurrences(of: "address:", with: "adress:")], csrf: csrf)
        #expect(invalid.status == 422 && invalid.body.contains("line 5, column 9: pipelines.edge-fwd.stages[0] (listen.tcp): adress: unknown key"), "\(invalid.body)")

        // Saved: a port taken on this host makes both agents refuse it; the live stream and the page show each
        // NACK with the agent's own error.
        #expect(try browser.post("/pipelines/edge/save", ["document": second], csrf: csrf).status == 200)
        #expect(eventually(timeout: 8) {
            (try? browser.stream("/pipelines/edge/events", seconds: 2))?.contains("0 applied · 0 pending · 2 refused") == true
        })
        let events = try browser.stream("/pipelines/edge/events", seconds: 2)
        #expect(events.contains("event: rows") && events.contains("event: summary"))
        #expect(events.contains("refused (NACK)") && events.contains("cannot listen on 127.0.0.1:\(taken.port) (listen.tcp): Address already in use"), "\(events)")
        // Viewers see the rollout but cannot preview.
        #expect(try coordinator.createConsoleAccount("watcher", role: "viewer", password: "correct horse battery staple 9").status == 0)
        let viewer = ConsoleClient(coordinator)
        try viewer.signIn("watcher", "correct horse battery staple 9")
        #expect(try viewer.get("/pipelines/edge").body.contains("2 refused"))
        #expect(try viewer.post("/pipelines/edge/preview", ["document": first], csrf: try viewer.csrfToken()).status == 403)
        #expect(try viewer.stream("/pipelines/edge/events", seconds: 1).contains("event: rows"))
        let stranger = ConsoleClient(coordinator)
        #expect(try stranger.get("/pipelines/edge/events").status == 401, "no live stream without a session")
    }

    @Test("relays: one form makes entry → exit, both agents run their side and traffic reaches the target; refused forms come back with the error and what was typed; viewers cannot; the key is on no page")
    func relays() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken(uses: 2)
        let entry = try CoordinatorTests.managedAgent("relay-entry", coordinator: coordinator, token: token, labels: ["role": "entry"])
        let exit = try CoordinatorTests.managedAgent("relay-exit", coordinator: coordinator, token: token, labels: [:])
        defer { entry.stop(); exit.stop() }
        #expect(eventually(timeout: 10) { CoordinatorTests.inSync(coordinator, "relay-entry") && CoordinatorTests.inSync(coordinator, "relay-exit") })
        let echo = try Backends.echo()
        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        let csrf = try browser.csrfToken()
        #expect(try browser.get("/relays").body.contains("No relays yet."))

        let entryPort = freePort(), exitPort = freePort()
        var form = [
            "name": "to-echo", "entry_selector": "role=entry", "listen": "127.0.0.1:\(entryPort)", "exit_agent": "relay-exit",
            "exit_listen": "127.0.0.1:\(exitPort)", "exit_address": "127.0.0.1:\(exitPort)", "target": "127.0.0.1:\(echo.port)",
            "cipher": "aes-256-gcm",
        ]
        // Refused: both an agent and a selector for the entry; an address the agent's validator refuses.
        var both = form
        both["entry_agent"] = "relay-entry"
        let twice = try browser.post("/relays/create", both, csrf: csrf)
        #expect(twice.status == 422 && twice.body.contains("entry: give exactly one of agent and selector"), "\(twice.body)")
        #expect(twice.body.contains("value=\"127.0.0.1:\(entryPort)\""), "the form comes back as typed")
        var badListen = form
        badListen["listen"] = "nowhere"
        let invalid = try browser.post("/relays/create", badListen, csrf: csrf)
        #expect(invalid.status == 422 && invalid.body.contains("address"), "\(invalid.body)")

        let created = try browser.post("/relays/create", form, csrf: csrf)
        #expect(created.status == 200 && created.body.contains("Relay to-echo created"), "\(created.body)")
        #expect(eventually(timeout: 10) { CoordinatorTests.echoes(entryPort) }, "traffic through entry → exit → target")
        #expect(eventually(timeout: 5) {
            let page = (try? browser.get("/relays").body) ?? ""
            return page.contains("entry: 1 agent: 1 applied · 0 pending · 0 refused") && page.contains("exit: 1 agent: 1 applied · 0 pending · 0 refused")
        })
        form["listen"] = "127.0.0.1:\(freePort())"
        #expect(try browser.post("/relays/create", form, csrf: csrf).body.contains("relay &quot;to-echo&quot; exists"))

        let viewer = ConsoleClient(coordinator)
        #expect(try coordinator.createConsoleAccount("relay-viewer", role: "viewer", password: "plum lantern orbit 73 dusk").status == 0)
        try viewer.signIn("relay-viewer", "plum lantern orbit 73 dusk")
        let seen = try viewer.get("/relays")
        #expect(seen.status == 200 && seen.body.contains("data-relay=\"to-echo\"") && !seen.body.contains("create-relay"))
        let adminView = try browser.get("/relays").body
        #expect(!seen.body.contains("password") && !adminView.contains("password"), "the key is shown nowhere")
        #expect(try viewer.post("/relays/to-echo/delete", csrf: try viewer.csrfToken()).status == 403)

        let deleted = try browser.post("/relays/to-echo/delete", csrf: csrf)
        #expect(deleted.status == 200 && deleted.body.contains("No relays yet."))
        #expect(eventually(timeout: 10) { !CoordinatorTests.echoes(entryPort) })
        let trail = try Self.audit(coordinator, browser)
        #expect(trail.contains("relay.create to-echo,ok,agents with role=entry on 127.0.0.1:\(entryPort) → aes-256-gcm → exit agent relay-exit"), "\(trail)")
        #expect(trail.contains("relay.create to-echo,failed,entry: give exactly one of agent and selector"))
        #expect(trail.contains("relay.delete to-echo,ok,deleted: "))
        #expect(trail.contains("relay-viewer,127.0.0.1,change relays,refused"))
    }

    @Test("the VPN page at scale: 250 users paged and searched on the server, the search escaped; a viewer sees no form and is refused a change (audited)")
    func vpnUsersPaged() throws {
        let coordinator = try CoordinatorProcess(pki: try TestPKI())
        try coordinator.start()
        defer { coordinator.stop() }
        for index in 0..<250 { try coordinator.admin("PUT", "/api/v1/vpn/users/user-\(String(format: "%03d", index))", json: [:]) }
        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        let first = try browser.get("/vpn")
        #expect(first.status == 200 && first.body.contains("250 users") && first.body.contains("page 1 of 3"), "\(first.body)")
        #expect(first.body.components(separatedBy: "<tr data-user=").count - 1 == 100)
        #expect(first.body.contains("data-user=\"user-000\"") && !first.body.contains("data-user=\"user-100\""))
        #expect(first.body.contains("href=\"/vpn?page=2\" rel=\"next\""))
        let third = try browser.get("/vpn?page=3")
        #expect(third.body.components(separatedBy: "<tr data-user=").count - 1 == 50 && third.body.contains("data-user=\"user-249\""))
        let search = try browser.get("/vpn?q=USER-24")
        #expect(search.body.contains("10 users match &quot;USER-24&quot;"), "\(search.body)")
        let hostile = try browser.get("/vpn?q=%3Cscript%3Ealert(1)%3C/script%3E")
        #expect(hostile.status == 200 && !hostile.body.contains("<script>alert") && hostile.body.contains("&lt;script&gt;"))
        #expect(try browser.get("/vpn?page=-4").body.contains("page 1 of 3"))
        let refused = try browser.post("/vpn/users/create", ["name": "<b>x</b>"], csrf: try browser.csrfToken())
        #expect(refused.status == 422 && refused.body.contains("a user name is 1-48 letters"))

        #expect(try coordinator.createConsoleAccount("vpn-viewer", role: "viewer", password: "quiet meadow copper 17 fern").status == 0)
        let viewer = ConsoleClient(coordinator)
        try viewer.signIn("vpn-viewer", "quiet meadow copper 17 fern")
        let page = try viewer.get("/vpn")
        #expect(page.status == 200 && page.body.contains("250 users") && !page.body.contains("create-user") && !page.body.contains("create-server"))
        #expect(try viewer.post("/vpn/users/create", ["name": "mallory"], csrf: try viewer.csrfToken()).status == 403)
        #expect(try viewer.post("/vpn/users/user-001/disable", csrf: try viewer.csrfToken()).status == 403)
        #expect(try viewer.get("/vpn/users/user-001/devices/x/config").status == 403)
        #expect(try coordinator.request("GET", "/api/v1/vpn/users/mallory", token: coordinator.adminToken).0 == 404)
        let trail = try Self.audit(coordinator, browser)
        #expect(trail.contains("account:vpn-viewer,127.0.0.1,change VPN users,refused"), "\(trail)")
    }
}
