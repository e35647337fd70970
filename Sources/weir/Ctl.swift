import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL
import WeirCore

/// `weir ctl`: the coordinator's REST API from a shell. Prints the API's JSON; exits 1 on an error status.
struct Ctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Talk to a coordinator's API (/api/v1).",
        subcommands: [CtlAgents.self, CtlPipelines.self, CtlAssignments.self, CtlLists.self, CtlVPN.self, CtlDNS.self, CtlEnrollmentTokens.self, CtlTokens.self, CtlRequest.self]
    )
}

struct CtlOptions: ParsableArguments {
    @Option(help: "Coordinator URL, e.g. https://coordinator:8443 (default: $WEIR_COORDINATOR_URL).")
    var url: String?

    @Option(help: "File holding an API token (default: $WEIR_API_TOKEN, else $WEIR_API_TOKEN_FILE).")
    var tokenFile: String?

    @Option(help: "CA certificate (PEM) that signed the coordinator's certificate (default: $WEIR_COORDINATOR_CA, else the system's).")
    var ca: String?

    /// Prints the response body, or with `output` writes it to that file (0600: it may hold a private key).
    func request(_ method: HTTPMethod, _ path: String, body: String? = nil, contentType: String = "application/json", output: String? = nil) async throws {
        let environment = ProcessInfo.processInfo.environment
        guard let base = url ?? environment["WEIR_COORDINATOR_URL"] else {
            throw ValidationError("no coordinator: give --url or set WEIR_COORDINATOR_URL")
        }
        var token = environment["WEIR_API_TOKEN"]
        if let file = tokenFile ?? (token == nil ? environment["WEIR_API_TOKEN_FILE"] : nil) {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("cannot read \(file)") }
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca = ca ?? environment["WEIR_COORDINATOR_CA"] {
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca))
        }
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        defer { _ = client.shutdown() }
        var request = HTTPClientRequest(url: base.trimmingCharacters(in: CharacterSet(charactersIn: "/")) + path)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: contentType)
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await client.execute(request, timeout: .seconds(30))
        let bytes = try await response.body.collect(upTo: 64 << 20)
        try? await client.shutdown()
        let text = String(buffer: bytes)
        if let output, (200..<300).contains(response.status.code) {
            do { try PrivateFile.write(Array(buffer: bytes), to: output) } catch { throw ValidationError("cannot write \(output): \(error)") }
        } else if !text.isEmpty {
            print(text, terminator: text.hasSuffix("\n") ? "" : "\n")
        }
        guard (200..<300).contains(response.status.code) else {
            FileHandle.standardError.write(Data("weir ctl: \(response.status.code) \(response.status.reasonPhrase)\n".utf8))
            throw ExitCode.failure
        }
    }
}

/// `key=value` arguments as a JSON object.
func labelsJSON(_ pairs: [String]) throws -> [String: String] {
    var labels: [String: String] = [:]
    for pair in pairs {
        let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { throw ValidationError("\"\(pair)\" is not key=value") }
        labels[parts[0]] = parts[1]
    }
    return labels
}

func jsonText(_ value: some Encodable) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}

func pathComponent(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(["/"])) ?? text }

struct CtlAgents: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agents", abstract: "List agents; show, delete or revoke one; set its labels.")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | show ID | traffic ID | delete ID | revoke ID | labels ID key=value...") var action: String = "list"
    @Argument var arguments: [String] = []

    func run() async throws {
        let id = arguments.first.map(pathComponent)
        switch (action, id) {
        case ("list", _): try await options.request(.GET, "/api/v1/agents")
        case ("show", let id?): try await options.request(.GET, "/api/v1/agents/\(id)")
        case ("traffic", let id?): try await options.request(.GET, "/api/v1/agents/\(id)/traffic")
        case ("delete", let id?): try await options.request(.DELETE, "/api/v1/agents/\(id)")
        case ("revoke", let id?): try await options.request(.POST, "/api/v1/agents/\(id)/revoke")
        case ("labels", let id?):
            try await options.request(.PUT, "/api/v1/agents/\(id)/labels", body: try jsonText(try labelsJSON(Array(arguments.dropFirst()))))
        default: throw ValidationError("usage: weir ctl agents list | show ID | traffic ID | delete ID | revoke ID | labels ID key=value...")
        }
    }
}

/// `weir ctl dns queries AGENT`: the newest answers of the agent's dns.filter stages (operator or admin).
struct CtlDNS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "dns", abstract: "An agent's DNS query log (its dns.filter stages' recent answers).")

    @OptionGroup var options: CtlOptions
    @Argument(help: "queries AGENT") var action: String
    @Argument var agent: String
    @Option(help: "Only this pipeline's dns.filter.") var pipeline: String?
    @Option(help: "Part of the name or of the client's address.") var search: String?
    @Option(help: "allowed | blocked | cached | servfail | refused") var result: String?
    @Option(help: "Newest entries to show (1-10000).") var limit: Int = 100

    func run() async throws {
        guard action == "queries" else { throw ValidationError("usage: weir ctl dns queries AGENT [--pipeline P] [--search S] [--result R] [--limit N]") }
        var query = URLComponents()
        query.queryItems = [URLQueryItem(name: "limit", value: "\(limit)")]
            + [("pipeline", pipeline), ("search", search), ("result", result)].compactMap { name, value in value.map { URLQueryItem(name: name, value: $0) } }
        try await options.request(.GET, "/api/v1/agents/\(pathComponent(agent))/dns/queries?\(query.percentEncodedQuery ?? "")")
    }
}

struct CtlPipelines: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipelines", abstract: "List, show, apply (from a YAML drop-in file) or delete pipeline documents.")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | show NAME | apply NAME FILE | delete NAME") var action: String = "list"
    @Argument var arguments: [String] = []

    func run() async throws {
        let name = arguments.first.map(pathComponent)
        switch (action, name) {
        case ("list", _): try await options.request(.GET, "/api/v1/pipelines")
        case ("show", let name?): try await options.request(.GET, "/api/v1/pipelines/\(name)")
        case ("delete", let name?): try await options.request(.DELETE, "/api/v1/pipelines/\(name)")
        case ("apply", let name?) where arguments.count == 2:
            guard let yaml = try? String(contentsOfFile: arguments[1], encoding: .utf8) else { throw ValidationError("cannot read \(arguments[1])") }
            try await options.request(.PUT, "/api/v1/pipelines/\(name)", body: yaml, contentType: "application/yaml")
        default: throw ValidationError("usage: weir ctl pipelines list | show NAME | apply NAME FILE | delete NAME")
        }
    }
}

struct CtlAssignments: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "assignments", abstract: "List assignments, assign a pipeline document to an agent or a label selector, or delete one.")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | add PIPELINE (--agent ID | --selector key=value,...) | delete ID") var action: String = "list"
    @Argument var arguments: [String] = []
    @Option(help: "An agent id.") var agent: String?
    @Option(help: "A label selector: key=value[,key=value...].") var selector: String?

    func run() async throws {
        switch (action, arguments.first) {
        case ("list", _): try await options.request(.GET, "/api/v1/assignments")
        case ("delete", let id?): try await options.request(.DELETE, "/api/v1/assignments/\(pathComponent(id))")
        case ("add", let pipeline?):
            var body = ["pipeline": pipeline]
            body["agent"] = agent
            body["selector"] = selector
            try await options.request(.POST, "/api/v1/assignments", body: try jsonText(body))
        default: throw ValidationError("usage: weir ctl assignments list | add PIPELINE (--agent ID | --selector k=v) | delete ID")
        }
    }
}

struct CtlLists: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lists", abstract: "Named lists (destinations, DNS rules, DNS records): list, show, set, add, remove, delete.")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | show NAME | set NAME ENTRY... | add NAME ENTRY... | remove NAME ENTRY... | delete NAME") var action: String = "list"
    @Argument var arguments: [String] = []
    @Flag(help: "Entries given here are protected: a push that omits them does not remove them from agents.") var protected = false
    @Flag(help: "Entries given here may be private, loopback or other non-public addresses.") var allowPrivate = false
    @Option(help: "With set: destinations (default for a new list) | dns_rules | dns_records (entries \"ADDRESS NAME...\").") var kind: String?

    func run() async throws {
        // Plain strings unless a flag asks for more; then the same address-or-domain test as the stage's.
        let entries: [ListEntryArgument] = arguments.dropFirst().map { text in
            guard protected || allowPrivate else { return .plain(text) }
            let isAddress = (try? IPNetwork.parse(text)) != nil
            return .detailed(address: isAddress ? text : nil, domain: isAddress ? nil : text, protected: protected ? true : nil,
                             allowPrivate: allowPrivate ? true : nil)
        }
        switch (action, arguments.first.map(pathComponent)) {
        case ("list", _): try await options.request(.GET, "/api/v1/lists")
        case ("show", let name?): try await options.request(.GET, "/api/v1/lists/\(name)")
        case ("delete", let name?): try await options.request(.DELETE, "/api/v1/lists/\(name)")
        case ("set", let name?):
            struct Body: Encodable {
                let entries: [ListEntryArgument]
                let kind: String?
            }
            try await options.request(.PUT, "/api/v1/lists/\(name)", body: try jsonText(Body(entries: entries, kind: kind)))
        case ("add", let name?): try await options.request(.POST, "/api/v1/lists/\(name)/entries", body: try jsonText(["add": entries]))
        case ("remove", let name?): try await options.request(.POST, "/api/v1/lists/\(name)/entries", body: try jsonText(["remove": entries]))
        default: throw ValidationError("usage: weir ctl lists list | show NAME | set|add|remove NAME ENTRY... [--protected] [--allow-private] [--kind K] | delete NAME")
        }
    }
}

enum ListEntryArgument: Encodable {
    case plain(String)
    case detailed(address: String?, domain: String?, protected: Bool?, allowPrivate: Bool?)

    enum Keys: String, CodingKey { case address, domain, protected, allowPrivate = "allow_private" }

    func encode(to encoder: any Encoder) throws {
        switch self {
        case .plain(let text):
            var container = encoder.singleValueContainer()
            try container.encode(text)
        case .detailed(let address, let domain, let protected, let allowPrivate):
            var container = encoder.container(keyedBy: Keys.self)
            try container.encodeIfPresent(address, forKey: .address)
            try container.encodeIfPresent(domain, forKey: .domain)
            try container.encodeIfPresent(protected, forKey: .protected)
            try container.encodeIfPresent(allowPrivate, forKey: .allowPrivate)
        }
    }
}

struct CtlEnrollmentTokens: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enrollment-tokens", abstract: "List, create or delete enrollment tokens.")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | create | delete ID") var action: String = "list"
    @Argument var arguments: [String] = []
    @Option(help: "A label enrolled agents get (repeatable): key=value.") var label: [String] = []
    @Option(help: "Expire after this long, e.g. 24h.") var ttl: String?
    @Option(help: "How many agents may enroll with it.") var uses: Int?

    func run() async throws {
        struct Body: Encodable {
            let labels: [String: String]
            let ttl: String?
            let uses: Int?
        }
        switch (action, arguments.first) {
        case ("list", _): try await options.request(.GET, "/api/v1/enrollment-tokens")
        case ("delete", let id?): try await options.request(.DELETE, "/api/v1/enrollment-tokens/\(pathComponent(id))")
        case ("create", _):
            try await options.request(.POST, "/api/v1/enrollment-tokens", body: try jsonText(Body(labels: try labelsJSON(label), ttl: ttl, uses: uses)))
        default: throw ValidationError("usage: weir ctl enrollment-tokens list | create [--label k=v] [--ttl 24h] [--uses N] | delete ID")
        }
    }
}

struct CtlTokens: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "tokens", abstract: "List, create or delete API tokens.")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | create NAME --role admin|operator|viewer | delete ID") var action: String = "list"
    @Argument var arguments: [String] = []
    @Option(help: "admin, operator (all but tokens) or viewer (read only, secrets redacted).") var role: String = "viewer"

    func run() async throws {
        switch (action, arguments.first) {
        case ("list", _): try await options.request(.GET, "/api/v1/tokens")
        case ("delete", let id?): try await options.request(.DELETE, "/api/v1/tokens/\(pathComponent(id))")
        case ("create", let name?): try await options.request(.POST, "/api/v1/tokens", body: try jsonText(["name": name, "role": role]))
        default: throw ValidationError("usage: weir ctl tokens list | create NAME --role admin|operator|viewer | delete ID")
        }
    }
}

/// Any API call, for what the subcommands above do not cover.
struct CtlRequest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "request", abstract: "Send one request: METHOD PATH [--data JSON].")

    @OptionGroup var options: CtlOptions
    @Argument(help: "GET, POST, PUT or DELETE.") var method: String
    @Argument(help: "A path under the coordinator, e.g. /api/v1/agents.") var path: String
    @Option(help: "Request body (JSON).") var data: String?

    func run() async throws {
        try await options.request(HTTPMethod(rawValue: method.uppercased()), path, body: data)
    }
}
