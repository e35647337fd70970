import WeirCore

/// A client's configuration in wg-quick format (`wg-quick up`, the WireGuard apps; `wg setconf` takes it
/// without Address and DNS): the client's own key and addresses, the server as its one peer. Rendered by
/// `weir wireguard config` on an agent and by the coordinator for VPN devices.
public struct WireGuardClientFile: Sendable {
    /// The client's private key (base64); nil when only its owner has it (the peer brought its own key).
    public var privateKey: String?
    /// Said in a comment when the private key is not in the file.
    public var publicKey: String?
    public var addresses: [IPNetwork]
    public var dns: [String]
    public var mtu: Int?
    public var serverPublicKey: WireGuardKey
    public var presharedKey: String?
    public var endpoint: String
    public var allowedIPs: [String]
    public var persistentKeepalive: Int

    public init(
        privateKey: String?, publicKey: String?, addresses: [IPNetwork], dns: [String] = [], mtu: Int? = nil,
        serverPublicKey: WireGuardKey, presharedKey: String? = nil, endpoint: String, allowedIPs: [String] = ["0.0.0.0/0", "::/0"],
        persistentKeepalive: Int = 0
    ) {
        self.privateKey = privateKey
        self.publicKey = publicKey
        self.addresses = addresses
        self.dns = dns
        self.mtu = mtu
        self.serverPublicKey = serverPublicKey
        self.presharedKey = presharedKey
        self.endpoint = endpoint
        self.allowedIPs = allowedIPs
        self.persistentKeepalive = persistentKeepalive
    }

    public var text: String {
        var lines = ["[Interface]"]
        if let privateKey {
            lines.append("PrivateKey = \(privateKey)")
        } else {
            lines.append("# PrivateKey = the private key of \(publicKey ?? "this peer"), which only its owner has")
        }
        // A single address from a pool is the host's /32 (or /128) in the tunnel.
        lines.append("Address = " + addresses.map { "\($0.address)/\($0.prefix)" }.joined(separator: ", "))
        if !dns.isEmpty { lines.append("DNS = " + dns.joined(separator: ", ")) }
        if let mtu { lines.append("MTU = \(mtu)") }
        lines += ["", "[Peer]", "PublicKey = \(serverPublicKey.base64)"]
        if let presharedKey { lines.append("PresharedKey = \(presharedKey)") }
        lines.append("Endpoint = \(endpoint)")
        lines.append("AllowedIPs = " + allowedIPs.joined(separator: ", "))
        if persistentKeepalive > 0 { lines.append("PersistentKeepalive = \(persistentKeepalive)") }
        return lines.joined(separator: "\n") + "\n"
    }
}
