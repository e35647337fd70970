import Foundation
import WeirCore
import WeirVPN

/// A WireGuard server the coordinator manages: one agent, or every agent a selector matches (servers of a
/// group share the key, the pool and the devices, so a client may use any of them). It renders into one
/// pipeline document with the `wireguard` stage and the peers of its users' devices, plus
/// `enforce.nftables` (profiles, masquerade) and `shape.tc` (plans' rates) when they have something to do.
struct VPNServer: Codable, Sendable, Equatable {
    var name: String
    var agent: String?
    var selector: LabelSelector?
    var interface: String
    var listenPort: Int
    /// What clients dial (host:port), written into their configurations.
    var endpoint: String
    /// The interface's own addresses (10.8.0.1/24).
    var addresses: [String]
    /// Where devices get their addresses: one per network.
    var pool: [String]
    /// DNS servers written into client configurations.
    var dns: [String]
    /// What clients send through the tunnel (their AllowedIPs): everything by default.
    var clientAllowedIPs: [String]
    var mtu: Int?
    /// Source NAT of the pool to this interface's address (a server in front of the internet).
    var masqueradeInterface: String?
    /// The server's private key (base64); sealed at rest, never shown by the API.
    var privateKey: String
    var createdAt: Double

    enum CodingKeys: String, CodingKey {
        case name, agent, selector, interface, listenPort = "listen_port", endpoint, addresses, pool, dns
        case clientAllowedIPs = "client_allowed_ips", mtu, masqueradeInterface = "masquerade_interface", privateKey = "private_key"
        case createdAt = "created_at"
    }

    var pipelineID: String { "vpn-\(name)" }
    /// A dot, which operators' documents cannot have: no collision.
    var documentName: String { "vpn.\(name)" }

    var publicKey: String { WireGuardKey(base64: privateKey)?.publicKey.base64 ?? "" }

    var poolNetworks: [IPNetwork] { pool.compactMap { try? IPNetwork.parse($0) } }

    /// The interface's own addresses as single addresses: never given to a device.
    var ownAddresses: [IPNetwork] {
        addresses.compactMap { text in
            (try? IPNetwork.parse(String(text.split(separator: "/").first ?? ""))).flatMap { $0.isSingleAddress ? $0 : nil }
        }
    }

    /// What the API shows: everything but the private key, and the public key clients need.
    struct View: Encodable {
        let server: VPNServer

        enum Keys: String, CodingKey { case publicKey = "public_key" }

        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(server.name, forKey: .name)
            try container.encode(server.agent, forKey: .agent)
            try container.encode(server.selector, forKey: .selector)
            try container.encode(server.interface, forKey: .interface)
            try container.encode(server.listenPort, forKey: .listenPort)
            try container.encode(server.endpoint, forKey: .endpoint)
            try container.encode(server.addresses, forKey: .addresses)
            try container.encode(server.pool, forKey: .pool)
            try container.encode(server.dns, forKey: .dns)
            try container.encode(server.clientAllowedIPs, forKey: .clientAllowedIPs)
            try container.encode(server.mtu, forKey: .mtu)
            try container.encode(server.masqueradeInterface, forKey: .masqueradeInterface)
            try container.encode(server.createdAt, forKey: .createdAt)
            var extra = encoder.container(keyedBy: Keys.self)
            try extra.encode(server.publicKey, forKey: .publicKey)
        }
    }
}

/// What a user may use: a rate for each of their devices (shape.tc on the server's interface, both
/// directions) and a transfer quota per period (the wireguard stage's peer quota).
struct VPNPlan: Codable, Sendable, Equatable {
    var name: String
    /// `20mbit`; nil: not shaped.
    var rate: String?
    /// What a device may borrow up to; defaults to `rate`.
    var ceil: String?
    /// `50GiB`; nil: no quota.
    var quota: String?
    /// day, week or month (default).
    var period: String?
    var createdAt: Double

    enum CodingKeys: String, CodingKey { case name, rate, ceil, quota, period, createdAt = "created_at" }
}

struct VPNUser: Codable, Sendable, Equatable {
    var name: String
    var plan: String?
    /// enforce.nftables profile of every device: full (default), internet_only or intranet_only.
    var profile: String
    /// A disabled user's devices are left out of every server's bundle (their peers are removed).
    var disabled: Bool
    var createdAt: Double

    enum CodingKeys: String, CodingKey { case name, plan, profile, disabled, createdAt = "created_at" }

    static let profiles = ["full", "internet_only", "intranet_only"]
}

/// A user's device on one server: its addresses from the server's pool and its key pair (generated by the
/// coordinator, private key sealed at rest), or a public key its owner brought.
struct VPNDevice: Codable, Sendable, Equatable {
    var user: String
    var name: String
    var server: String
    var addresses: [String]
    var publicKey: String
    /// nil when the owner brought the key.
    var privateKey: String?
    var createdAt: Double

    enum CodingKeys: String, CodingKey {
        case user, name, server, addresses, publicKey = "public_key", privateKey = "private_key", createdAt = "created_at"
    }

    /// The peer's name on the server: user names have no '.'-free guarantee, device names do, so the last
    /// dot splits it back.
    var peerName: String { "\(user).\(name)" }

    /// The secret's owner for `SecretBox`.
    var sealOwner: String { "vpn-device/\(user)/\(name)" }
}

/// The rules for names, checked by the API.
enum VPNNames {
    static func isValidServer(_ name: String) -> Bool { ConfigLoader.isValidName(name) && name.count <= 58 }

    /// Letters, digits, - _ . @ (e-mail addresses work), and room for ".device" in a peer name.
    static func isValidUser(_ name: String) -> Bool {
        (1...48).contains(name.count) && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.@".contains($0)) }
            && !name.hasPrefix(".")
    }

    static func isValidDevice(_ name: String) -> Bool {
        (1...15).contains(name.count) && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_".contains($0)) }
    }
}
