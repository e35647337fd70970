import Foundation

/// A browser-like client of a coordinator's web console: curl with a cookie jar of its own, so the
/// console's __Host- cookies, redirects and forms are exercised as a browser would.
final class ConsoleClient: @unchecked Sendable {
    let coordinator: CoordinatorProcess
    let jar: URL

    struct Page {
        let status: Int
        let headers: [String: String]
        /// Every Set-Cookie header, in order.
        let cookies: [String]
        let body: String

        /// The value of `<input … name="NAME" value="VALUE">` or `<meta name="NAME" content="VALUE">`.
        func field(_ name: String) -> String? {
            for pattern in ["name=\"\(name)\" value=\"([^\"]*)\"", "name=\"\(name)\" content=\"([^\"]*)\""] {
                if let match = body.range(of: pattern, options: .regularExpression) {
                    let text = String(body[match])
                    return text.split(separator: "\"").dropFirst(3).first.map(String.init) ?? ""
                }
            }
            return nil
        }
    }

    /// curl runs where the coordinator does (its network namespace, if it has one).
    private var inNamespace: [String] { coordinator.netns.map { ["ip", "netns", "exec", $0] } ?? [] }

    init(_ coordinator: CoordinatorProcess) {
        self.coordinator = coordinator
        jar = coordinator.directory.appendingPathComponent("cookies-\(UUID().uuidString)")
    }

    deinit { try? FileManager.default.removeItem(at: jar) }

    var origin: String { "https://localhost:\(coordinator.port)" }

    /// One request; `form` is sent urlencoded. Redirects are not followed (their Location is checked).
    func request(_ method: String, _ path: String, form: [String: String]? = nil, headers: [String] = [], useCookies: Bool = true) throws -> Page {
        let headerFile = coordinator.directory.appendingPathComponent("headers-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: headerFile) }
        var arguments = [
            "curl", "-s", "--max-time", "15", "--cacert", coordinator.pki.caPath, "-X", method, "-D", headerFile.path, "-w", "\n%{http_code}",
        ]
        if useCookies { arguments += ["-b", jar.path, "-c", jar.path] }
        for header in headers { arguments += ["-H", header] }
        if let form {
            if form.isEmpty { arguments += ["--data", ""] }
            for (key, value) in form.sorted(by: { $0.key < $1.key }) { arguments += ["--data-urlencode", "\(key)=\(value)"] }
        }
        arguments.append(coordinator.url + path)
        let (status, output) = try command(inNamespace + arguments)
        guard status == 0, let split = output.lastIndex(of: "\n"), let code = Int(output[output.index(after: split)...]) else {
            throw CommandFailed(command: "curl \(method) \(path)", status: status, output: output)
        }
        var headers: [String: String] = [:]
        var cookies: [String] = []
        for line in ((try? String(contentsOf: headerFile, encoding: .utf8)) ?? "").split(separator: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased(), value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            if name == "set-cookie" { cookies.append(value) } else { headers[name] = value }
        }
        return Page(status: code, headers: headers, cookies: cookies, body: String(output[..<split]))
    }

    func get(_ path: String, headers: [String] = []) throws -> Page { try request("GET", path, headers: headers) }

    /// The HTTP statuses of `count` live streams of `path` opened at once by this session (curl's parallel
    /// transfers), each held `seconds`.
    func streams(_ path: String, count: Int, seconds: Int) throws -> [Int] {
        var arguments = inNamespace + [
            "curl", "-s", "-N", "-Z", "--parallel-immediate", "--parallel-max", "\(count)", "--max-time", "\(seconds)", "-w", "%{http_code}\n",
            "--cacert", coordinator.pki.caPath, "-b", jar.path,
        ]
        for _ in 0..<count { arguments += ["-o", "/dev/null", coordinator.url + path] }
        return try command(arguments).output.split(separator: "\n").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.sorted()
    }

    /// What a live page's event stream sends in its first `seconds` (curl's timeout ends it).
    func stream(_ path: String, seconds: Int = 3) throws -> String {
        try command(inNamespace + ["curl", "-s", "-N", "--max-time", "\(seconds)", "--cacert", coordinator.pki.caPath, "-b", jar.path, coordinator.url + path]).1
    }

    /// A form post as the console's own pages make it: with the session's CSRF token (from `csrfFrom`'s
    /// meta tag, else the fleet page's) and this coordinator as Origin.
    func post(_ path: String, _ form: [String: String] = [:], csrf: String? = nil, origin: String? = nil, headers: [String] = []) throws -> Page {
        var fields = form
        if let csrf { fields["csrf"] = csrf }
        return try request("POST", path, form: fields, headers: ["Origin: \(origin ?? self.origin)"] + headers)
    }

    /// The signed-in page's CSRF token.
    func csrfToken() throws -> String { try get("/").field("csrf-token") ?? "" }

    /// Signs in through the form (GET /login for its token, then POST). Returns the POST's answer.
    @discardableResult
    func signIn(_ name: String, _ password: String, next: String = "/") throws -> Page {
        let form = try get("/login")
        return try post("/login", ["name": name, "password": password, "token": form.field("token") ?? "", "next": next])
    }
}

extension CoordinatorProcess {
    /// The first console administrator's password, written at the first start.
    var consoleAdminPassword: String {
        let text = (try? String(contentsOf: directory.appendingPathComponent("state/console-admin.password"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").dropFirst().first.map(String.init) ?? ""
    }

    /// `weir coordinator admin create NAME --role ROLE`, the password given on standard input.
    func createConsoleAccount(_ name: String, role: String, password: String) throws -> (status: Int32, output: String) {
        let quoted = password.replacingOccurrences(of: "'", with: "'\\''")
        return try command([
            "sh", "-c", "printf '%s\\n' '\(quoted)' | \(WeirProcess.binary) coordinator admin create --config \(configPath) --role \(role) --password-stdin \(name)",
        ])
    }
}
