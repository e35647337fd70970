import ArgumentParser
import Foundation

/// `weir ctl vpn`: VPN servers, plans, users and devices.
struct CtlVPN: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vpn", abstract: "VPN servers, plans, users and their devices (WireGuard).",
        subcommands: [CtlVPNServers.self, CtlVPNPlans.self, CtlVPNUsers.self, CtlVPNDevices.self])
}

struct CtlVPNServers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "servers", abstract: "List, show, put (create or change) or delete VPN servers.",
        discussion: """
            put NAME takes the options below; --agent or --selector says which agents run it, e.g.
              weir ctl vpn servers put office --agent gw1 --endpoint vpn.example.com:51820 \\
                --address 10.8.0.1/24 --pool 10.8.0.0/24 --dns 10.8.0.1 --masquerade eth0
            """)

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | show NAME | put NAME | delete NAME") var action: String = "list"
    @Argument var name: String?
    @Option(help: "The agent that runs the server.") var agent: String?
    @Option(help: "Or every agent matching key=value[,key=value].") var selector: String?
    @Option(help: "WireGuard interface (default wg0).") var interface: String?
    @Option(help: "UDP port (default 51820).") var listenPort: Int?
    @Option(help: "host:port clients dial.") var endpoint: String?
    @Option(name: .customLong("address"), help: "The interface's address (repeatable), e.g. 10.8.0.1/24.") var addresses: [String] = []
    @Option(name: .customLong("pool"), help: "Network devices get addresses from (repeatable).") var pool: [String] = []
    @Option(name: .customLong("dns"), help: "DNS server for clients (repeatable).") var dns: [String] = []
    @Option(name: .customLong("client-allowed-ip"), help: "What clients route through the tunnel (repeatable; default everything).")
    var clientAllowedIPs: [String] = []
    @Option(help: "MTU of the interface and clients.") var mtu: Int?
    @Option(help: "Masquerade the pool out of this interface.") var masquerade: String?

    func run() async throws {
        switch (action, name.map(pathComponent)) {
        case ("list", _): try await options.request(.GET, "/api/v1/vpn/servers")
        case ("show", let name?): try await options.request(.GET, "/api/v1/vpn/servers/\(name)")
        case ("delete", let name?): try await options.request(.DELETE, "/api/v1/vpn/servers/\(name)")
        case ("put", let name?):
            guard let endpoint else { throw ValidationError("put needs --endpoint") }
            var body: [String: JSONValue] = [
                "endpoint": .string(endpoint), "addresses": .strings(addresses), "pool": .strings(pool), "dns": .strings(dns),
            ]
            if let agent { body["agent"] = .string(agent) }
            if let selector { body["selector"] = .string(selector) }
            if let interface { body["interface"] = .string(interface) }
            if let listenPort { body["listen_port"] = .number(listenPort) }
            if !clientAllowedIPs.isEmpty { body["client_allowed_ips"] = .strings(clientAllowedIPs) }
            if let mtu { body["mtu"] = .number(mtu) }
            if let masquerade { body["masquerade_interface"] = .string(masquerade) }
            try await options.request(.PUT, "/api/v1/vpn/servers/\(name)", body: try jsonText(body))
        default: throw ValidationError("usage: weir ctl vpn servers list | show NAME | put NAME --endpoint … | delete NAME")
        }
    }
}

struct CtlVPNPlans: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "plans", abstract: "List, put or delete plans (a rate and a transfer quota).")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | put NAME | delete NAME") var action: String = "list"
    @Argument var name: String?
    @Option(help: "Rate of each device, e.g. 20mbit.") var rate: String?
    @Option(help: "What a device may borrow up to (default: rate).") var ceil: String?
    @Option(help: "Transfer per period, e.g. 50GiB.") var quota: String?
    @Option(help: "day, week or month (default).") var period: String?

    func run() async throws {
        switch (action, name.map(pathComponent)) {
        case ("list", _): try await options.request(.GET, "/api/v1/vpn/plans")
        case ("delete", let name?): try await options.request(.DELETE, "/api/v1/vpn/plans/\(name)")
        case ("put", let name?):
            let body = ["rate": rate, "ceil": ceil, "quota": quota, "period": period].compactMapValues { $0 }
            try await options.request(.PUT, "/api/v1/vpn/plans/\(name)", body: try jsonText(body))
        default: throw ValidationError("usage: weir ctl vpn plans list | put NAME [--rate R] [--ceil C] [--quota Q --period P] | delete NAME")
        }
    }
}

struct CtlVPNUsers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "users", abstract: "List, show, put, disable, enable or delete VPN users (with their devices and usage).")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list | show NAME | put NAME | disable NAME | enable NAME | delete NAME") var action: String = "list"
    @Argument var name: String?
    @Option(help: "The user's plan.") var plan: String?
    @Option(help: "full (default), internet_only or intranet_only.") var profile: String?

    func run() async throws {
        switch (action, name.map(pathComponent)) {
        case ("list", _): try await options.request(.GET, "/api/v1/vpn/users")
        case ("show", let name?): try await options.request(.GET, "/api/v1/vpn/users/\(name)")
        case ("delete", let name?): try await options.request(.DELETE, "/api/v1/vpn/users/\(name)")
        case ("disable", let name?), ("enable", let name?): try await options.request(.POST, "/api/v1/vpn/users/\(name)/\(action)")
        case ("put", let name?):
            let body = ["plan": plan, "profile": profile].compactMapValues { $0 }
            try await options.request(.PUT, "/api/v1/vpn/users/\(name)", body: try jsonText(body))
        default: throw ValidationError("usage: weir ctl vpn users list | show NAME | put NAME [--plan P] [--profile X] | disable NAME | enable NAME | delete NAME")
        }
    }
}

struct CtlVPNDevices: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices", abstract: "A user's devices: list, add, show, delete; config prints the client configuration, qr writes it as PNG or SVG.")

    @OptionGroup var options: CtlOptions
    @Argument(help: "list USER | add USER DEVICE --server S | show USER DEVICE | delete USER DEVICE | config USER DEVICE | qr USER DEVICE -o FILE")
    var action: String
    @Argument var arguments: [String] = []
    @Option(help: "The VPN server the device connects to (add).") var server: String?
    @Option(help: "The device's own public key (add; default: the coordinator generates a key pair).") var publicKey: String?
    @Option(name: .shortAndLong, help: "Write config or qr to this file (0600); qr: .png or .svg.") var output: String?

    func run() async throws {
        let parts = arguments.map(pathComponent)
        guard let user = parts.first else { throw ValidationError("give the user") }
        let base = "/api/v1/vpn/users/\(user)/devices"
        switch (action, parts.count > 1 ? parts[1] : nil) {
        case ("list", _): try await options.request(.GET, base)
        case ("add", .some):
            guard let server else { throw ValidationError("add needs --server") }
            let body = ["name": arguments[1], "server": server, "public_key": publicKey].compactMapValues { $0 }
            try await options.request(.POST, base, body: try jsonText(body))
        case ("show", let device?): try await options.request(.GET, "\(base)/\(device)")
        case ("delete", let device?): try await options.request(.DELETE, "\(base)/\(device)")
        case ("config", let device?): try await options.request(.GET, "\(base)/\(device)/config", output: output)
        case ("qr", let device?):
            guard let output else { throw ValidationError("qr needs -o FILE.png or FILE.svg") }
            try await options.request(.GET, "\(base)/\(device)/qr.\(output.hasSuffix(".svg") ? "svg" : "png")", output: output)
        default: throw ValidationError("usage: weir ctl vpn devices list USER | add USER DEVICE --server S | show|delete|config USER DEVICE | qr USER DEVICE -o FILE")
        }
    }
}

/// Just enough JSON for request bodies with mixed values.
enum JSONValue: Encodable {
    case string(String)
    case strings([String])
    case number(Int)

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let text): try container.encode(text)
        case .strings(let list): try container.encode(list)
        case .number(let number): try container.encode(number)
        }
    }
}
