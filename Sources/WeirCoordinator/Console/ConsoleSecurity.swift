import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// Who is signed in to the console for the request being served (set by `ConsoleSessionMiddleware`).
struct ConsoleUser: Sendable {
    let account: ConsoleAccount
    let session: ConsoleSession

    @TaskLocal static var current: ConsoleUser?

    var actor: String { "account:\(account.name)" }
}

/// Headers on every response of the coordinator's port: pages take scripts, styles and images from the
/// coordinator only and cannot be framed; browsers keep to HTTPS; nothing is sniffed or leaks a referrer.
struct SecurityHeadersMiddleware<Context: RequestContext>: RouterMiddleware {
    static var policy: String {
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; "
            + "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        response.headers[.contentSecurityPolicy] = Self.policy
        response.headers[.strictTransportSecurity] = "max-age=31536000; includeSubDomains"
        response.headers[.xContentTypeOptions] = "nosniff"
        response.headers[.referrerPolicy] = "same-origin"
        response.headers[.xFrameOptions] = "DENY"
        if response.headers[.cacheControl] == nil { response.headers[.cacheControl] = "no-store" }
        return response
    }
}

/// The console's cookies: `__Host-` (the browser accepts them only over HTTPS, for this host, path /),
/// HttpOnly, SameSite=Strict.
enum ConsoleCookie {
    static let session = "__Host-weir_session"
    /// The sign-in form's token (double submit: the form and this cookie must carry the same value).
    static let signIn = "__Host-weir_signin"

    static func set(_ name: String, _ value: String, maxAge: Int? = nil) -> String {
        "\(name)=\(value); Path=/; Secure; HttpOnly; SameSite=Strict" + (maxAge.map { "; Max-Age=\($0)" } ?? "")
    }

    static func clear(_ name: String) -> String { set(name, "", maxAge: 0) }

    static func read(_ name: String, from request: Request) -> String? { request.cookies[name]?.value }
}

/// What a state-changing console request must show besides its session: it comes from a page of this
/// coordinator (Origin and Sec-Fetch-Site, when the browser sends them) and carries the session's
/// synchronizer token (form field `csrf` or header X-CSRF-Token).
enum CSRFCheck {
    /// Why the request is refused, or nil.
    static func problem(_ request: Request, expectedToken: String, formToken: String?) -> String? {
        if let site = request.headers[.secFetchSite], site != "same-origin" { return "cross-site request (Sec-Fetch-Site: \(site))" }
        if let origin = request.headers[.origin], let host = request.head.authority, origin != "https://\(host)" {
            return "request from another origin (\(origin))"
        }
        let token = request.headers[.xCSRFToken] ?? formToken
        guard let token, constantTimeEqual(token, expectedToken) else { return "missing or wrong CSRF token" }
        return nil
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}

/// A form body (application/x-www-form-urlencoded) as a dictionary; the last value of a repeated field wins.
enum FormBody {
    static let limit = 64 << 10

    /// A body over `limit` is 413 (it was a 500 and an error in the log before a test sent one).
    static func read(_ request: inout Request, limit: Int = FormBody.limit) async throws -> [String: String] {
        let tooLarge = HTTPError(.contentTooLarge, message: "the form is larger than \(limit) bytes")
        if let length = request.headers[.contentLength].flatMap(Int.init), length > limit { throw tooLarge }
        do {
            return parse(String(buffer: try await request.collectBody(upTo: limit)))
        } catch is NIOTooManyBytesError {
            throw tooLarge
        }
    }

    static func parse(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ part: Substring) -> String { part.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? "" }
            fields[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return fields
    }
}

extension HTTPField.Name {
    static let secFetchSite = Self("Sec-Fetch-Site")!
    static let xCSRFToken = Self("X-CSRF-Token")!
    static let xFrameOptions = Self("X-Frame-Options")!
    static let referrerPolicy = Self("Referrer-Policy")!
}
