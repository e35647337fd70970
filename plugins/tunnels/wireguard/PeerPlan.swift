import WeirCore
import WeirVPN

/// What the device should be: the configuration's keys, port and peers.
struct DesiredDevice: Sendable, Equatable {
    var privateKey: WireGuardKey
    var listenPort: Int
    var fwmark: UInt32
    var peers: [DesiredPeer]
}

struct DesiredPeer: Sendable, Equatable {
    var name: String
    var publicKey: WireGuardKey
    var presharedKey: WireGuardKey?
    /// The endpoint to dial now (a client's current choice among its `endpoints`), or nil to leave the
    /// one the peer roams to alone.
    var endpoint: String?
    var persistentKeepalive: Int
    var allowedIPs: [IPNetwork]
}

/// The change that takes a device to the configuration, like `wg syncconf`: only what differs is set, so a
/// peer that did not change keeps its session, endpoint and counters.
struct PeerPlan: Sendable, Equatable {
    var setPrivateKey: WireGuardKey?
    var setListenPort: Int?
    var setFwmark: UInt32?
    var add: [DesiredPeer] = []
    var update: [DesiredPeer] = []
    /// Peers the previous configuration had and this one does not.
    var remove: [WireGuardKey] = []
    /// Peers on the device the agent never configured (added by hand, left by another run).
    var purge: [WireGuardKey] = []

    var isEmpty: Bool {
        setPrivateKey == nil && setListenPort == nil && setFwmark == nil && add.isEmpty && update.isEmpty && remove.isEmpty && purge.isEmpty
    }

    /// `known`: the public keys this stage configured before (from its state), whose removal is intended.
    static func make(desired: DesiredDevice, actual: DeviceState, known: Set<WireGuardKey>) -> PeerPlan {
        var plan = PeerPlan()
        if actual.privateKey != desired.privateKey { plan.setPrivateKey = desired.privateKey }
        if actual.listenPort != desired.listenPort, desired.listenPort != 0 { plan.setListenPort = desired.listenPort }
        if actual.fwmark != desired.fwmark { plan.setFwmark = desired.fwmark }
        let current = Dictionary(actual.peers.map { ($0.publicKey, $0) }) { first, _ in first }
        let wanted = Set(desired.peers.map(\.publicKey))
        for peer in desired.peers {
            guard let existing = current[peer.publicKey] else {
                plan.add.append(peer)
                continue
            }
            let endpointDiffers = peer.endpoint != nil && peer.endpoint != existing.endpoint
            if existing.presharedKey != peer.presharedKey || existing.persistentKeepalive != peer.persistentKeepalive
                || Set(existing.allowedIPs) != Set(peer.allowedIPs) || endpointDiffers
            {
                plan.update.append(peer)
            }
        }
        for peer in actual.peers where !wanted.contains(peer.publicKey) {
            if known.contains(peer.publicKey) { plan.remove.append(peer.publicKey) } else { plan.purge.append(peer.publicKey) }
        }
        return plan
    }

    /// The UAPI `set=1` transactions for the plan, at most `chunk` peers each (a large peer set is sent in
    /// pieces, each applied whole). Purged peers are included only when `purging`.
    func uapiTransactions(purging: Bool, chunk: Int = 500) -> [String] {
        var device = ""
        if let setPrivateKey { device += "private_key=\(setPrivateKey.hex)\n" }
        if let setListenPort { device += "listen_port=\(setListenPort)\n" }
        if let setFwmark { device += "fwmark=\(setFwmark)\n" }
        var peers: [String] = []
        for key in remove + (purging ? purge : []) { peers.append("public_key=\(key.hex)\nremove=true\n") }
        for peer in add { peers.append(Self.peerLines(peer, updateOnly: false)) }
        for peer in update { peers.append(Self.peerLines(peer, updateOnly: true)) }
        var transactions: [String] = []
        var index = 0
        repeat {
            let slice = peers[index..<min(index + chunk, peers.count)]
            let body = (index == 0 ? device : "") + slice.joined()
            if !body.isEmpty { transactions.append("set=1\n" + body + "\n") }
            index += chunk
        } while index < peers.count
        return transactions
    }

    /// A new peer gets only what differs from a new peer's defaults (as `wg setconf` sends it); an updated one
    /// gets every setting, so what the configuration dropped is reset too.
    private static func peerLines(_ peer: DesiredPeer, updateOnly: Bool) -> String {
        var lines = "public_key=\(peer.publicKey.hex)\n"
        if updateOnly { lines += "update_only=true\n" }
        if updateOnly || peer.presharedKey != nil {
            lines += "preshared_key=\((peer.presharedKey?.hex) ?? String(repeating: "0", count: 64))\n"
        }
        if let endpoint = peer.endpoint { lines += "endpoint=\(endpoint)\n" }
        if updateOnly || peer.persistentKeepalive != 0 { lines += "persistent_keepalive_interval=\(peer.persistentKeepalive)\n" }
        if updateOnly { lines += "replace_allowed_ips=true\n" }
        for ip in peer.allowedIPs { lines += "allowed_ip=\(ip.address)/\(ip.prefix)\n" }
        return lines
    }
}
