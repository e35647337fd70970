import Foundation
import HTTPTypes
import Hummingbird
import Testing
@testable import WeirCoordinator

/// The console's security rules without a server: passwords, the address throttle, CSRF, forms, redirects, CSV.
@Suite struct ConsoleSecurityTests {
    @Test("passwords: at least 12 characters, not a common one (also with digits or symbols around it), not a key run, not the account name")
    func passwordPolicy() {
        #expect(PasswordPolicy.problem("short-pass1", account: "alice") != nil)
        #expect(PasswordPolicy.problem("qwertyuiopasdf", account: "alice") != nil, "a run of keys")
        #expect(PasswordPolicy.problem("123qweasdzxc", account: "alice") != nil, "in the common list")
        #expect(PasswordPolicy.problem("Password2024!", account: "alice") != nil, "a common word with digits and symbols around it")
        #expect(PasswordPolicy.problem("football123456", account: "alice") != nil)
        #expect(PasswordPolicy.problem("aaaaaaaaaaaaaaaa", account: "alice") != nil, "too few distinct characters")
        #expect(PasswordPolicy.problem("alice-in-the-garden", account: "alice") != nil, "contains the account name")
        #expect(PasswordPolicy.problem(String(repeating: "correct horse ", count: 10), account: "alice") != nil, "longer than 128 bytes")
        #expect(PasswordPolicy.problem("correct horse battery staple", account: "alice") == nil)
        #expect(PasswordPolicy.problem("v8#Lq2!rTz9@wX", account: "alice") == nil)
        for _ in 0..<20 { #expect(PasswordPolicy.problem(ConsolePasswords.generate(), account: "admin") == nil) }
        #expect(PasswordPolicy.common.count > 9_000)
    }

    @Test("bcrypt at cost 12 verifies the right password only; an unknown account (no hash) never verifies")
    func passwordHashing() async throws {
        let hash = try await PasswordPolicy.hash("correct horse battery staple")
        #expect(hash.hasPrefix("$2b$12$") || hash.hasPrefix("$2a$12$") || hash.hasPrefix("$2y$12$"), "\(hash)")
        #expect(try await PasswordPolicy.verify("correct horse battery staple", hash: hash))
        #expect(try await !PasswordPolicy.verify("correct horse battery stapler", hash: hash))
        #expect(try await !PasswordPolicy.verify("correct horse battery staple", hash: nil))
    }

    @Test("the address throttle refuses at the limit within the window, lets the address in again as failures age out, and stays bounded")
    func addressThrottle() {
        var throttle = AddressThrottle(limit: 3, window: 60, maxAddresses: 100)
        for second in 0..<3 {
            #expect(throttle.retryAfter("192.0.2.1", now: Double(second)) == nil)
            throttle.recordFailure("192.0.2.1", now: Double(second))
        }
        #expect(throttle.retryAfter("192.0.2.1", now: 10) == 50, "until the oldest failure (t=0) leaves the window")
        #expect(throttle.retryAfter("192.0.2.2", now: 10) == nil, "another address is not affected")
        #expect(throttle.retryAfter("192.0.2.1", now: 60.5) == nil, "the oldest failure aged out")
        throttle.recordFailure("192.0.2.1", now: 61)
        #expect(throttle.retryAfter("192.0.2.1", now: 61.5) == nil, "two within the window (t=2, t=61)")
        throttle.recordFailure("192.0.2.1", now: 61.5)
        #expect(throttle.retryAfter("192.0.2.1", now: 61.6) != nil, "three within the window again (t=2, 61, 61.5)")
        // A scan from a thousand addresses: at most 100 remembered, the newest ones.
        for index in 0..<1_000 { throttle.recordFailure("10.0.\(index / 256).\(index % 256)", now: 100 + Double(index) / 100) }
        #expect(throttle.trackedAddresses <= 100)
        throttle.recordFailure("10.0.3.231", now: 110)
        throttle.recordFailure("10.0.3.231", now: 110)
        #expect(throttle.retryAfter("10.0.3.231", now: 110) != nil, "the newest address kept its first failure")
    }

    private func request(method: HTTPRequest.Method = .post, headers: HTTPFields) -> Request {
        let head = HTTPRequest(method: method, scheme: "https", authority: "coordinator.example:8443", path: "/logout", headerFields: headers)
        return Request(head: head, body: .init(buffer: .init()))
    }

    @Test("CSRF: the token must match (header or form field), the Origin must be this coordinator, Sec-Fetch-Site same-origin")
    func csrf() {
        let token = "abcdef0123456789"
        #expect(CSRFCheck.problem(request(headers: [:]), expectedToken: token, formToken: token) == nil)
        #expect(CSRFCheck.problem(request(headers: [.xCSRFToken: token]), expectedToken: token, formToken: nil) == nil)
        #expect(CSRFCheck.problem(request(headers: [:]), expectedToken: token, formToken: nil) != nil, "no token")
        #expect(CSRFCheck.problem(request(headers: [:]), expectedToken: token, formToken: "abcdef0123456788") != nil, "wrong token")
        #expect(CSRFCheck.problem(request(headers: [:]), expectedToken: token, formToken: "") != nil)
        #expect(CSRFCheck.problem(request(headers: [.origin: "https://coordinator.example:8443"]), expectedToken: token, formToken: token) == nil)
        #expect(CSRFCheck.problem(request(headers: [.origin: "https://evil.example"]), expectedToken: token, formToken: token) != nil)
        #expect(CSRFCheck.problem(request(headers: [.origin: "http://coordinator.example:8443"]), expectedToken: token, formToken: token) != nil)
        #expect(CSRFCheck.problem(request(headers: [.secFetchSite: "cross-site"]), expectedToken: token, formToken: token) != nil)
        #expect(CSRFCheck.problem(request(headers: [.secFetchSite: "same-site"]), expectedToken: token, formToken: token) != nil)
        #expect(CSRFCheck.problem(request(headers: [.secFetchSite: "same-origin"]), expectedToken: token, formToken: token) == nil)
    }

    @Test("cookies are __Host-, Secure, HttpOnly, SameSite=Strict, Path=/; read back from a Cookie header among others")
    func cookies() {
        let set = ConsoleCookie.set(ConsoleCookie.session, "value")
        for part in ["__Host-weir_session=value", "Path=/", "Secure", "HttpOnly", "SameSite=Strict"] { #expect(set.contains(part), "\(set)") }
        #expect(!set.contains("Domain"))
        #expect(ConsoleCookie.clear(ConsoleCookie.session).contains("Max-Age=0"))
        let request = request(method: .get, headers: [.cookie: "a=1; __Host-weir_session=s3cr3t; b=2"])
        #expect(ConsoleCookie.read(ConsoleCookie.session, from: request) == "s3cr3t")
        #expect(ConsoleCookie.read(ConsoleCookie.signIn, from: request) == nil)
    }

    @Test("forms, the place to go after sign-in, CSV fields and server-sent events")
    func formsRedirectsCSV() {
        #expect(FormBody.parse("name=al+ice&password=a%26b%3Dc&empty=&flag") == ["name": "al ice", "password": "a&b=c", "empty": "", "flag": ""])
        #expect(Console.safeNext("/audit?actor=x") == "/audit?actor=x")
        for bad in ["//evil.example/", "https://evil.example/", "\\\\evil", "/\\evil", "audit", nil] { #expect(Console.safeNext(bad) == "/") }
        #expect(Console.csvField("plain") == "plain")
        #expect(Console.csvField("a,b") == "\"a,b\"")
        #expect(Console.csvField("say \"hi\"") == "\"say \"\"hi\"\"\"")
        #expect(Console.csvField("=cmd()") == "'=cmd()")
        #expect(Console.event("rows", "<tr>\n<td>x</td>") == "event: rows\ndata: <tr>\ndata: <td>x</td>\n\n")
        #expect(Console.age(5) == "5 s ago" && Console.age(125) == "2 min ago" && Console.age(7300) == "2 h ago")
        #expect(Console.bytes(512) == "512 B" && Console.bytes(1536) == "1.5 KiB")
    }

    @Test("templates escape what users typed: labels, errors and names never reach a page as markup")
    func templatesEscape() throws {
        let templates = try ConsoleTemplates()
        let page = templates.render("login", ["title": "Sign in", "token": "t", "next": "/", "name": "<script>alert(1)</script>", "error": "\"><img src=x>"])
        #expect(!page.contains("<script>alert(1)</script>") && page.contains("&lt;script&gt;"))
        #expect(!page.contains("<img src=x>"))
        let rows = templates.render("fleet_rows", ["agents": [["id": "<b>x</b>", "labels": [["text": "a=<i>"]], "state": "online"]]])
        #expect(!rows.contains("<b>x</b>") && !rows.contains("<i>"))
    }
}
