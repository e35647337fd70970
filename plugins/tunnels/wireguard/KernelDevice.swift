import CWeirNetlink
import Glibc
import WeirCore
import WeirVPN

/// A WireGuard interface of the kernel module, through its `wireguard` generic netlink family (the C layer
/// in CWeirNetlink/wireguard.c). Untested on this project's CI kernel, which has no module: the message
/// encoding and decoding are tested without it (`WireGuardKernelMessageTests`), and the plan is the one the
/// userspace backend's tests exercise.
struct KernelDevice: WireGuardDevice {
    let interface: String
    var backend: String { "kernel" }

    /// Whether the kernel has the family (the module loaded or loadable).
    static var isAvailable: Bool { weir_wg_available() == 1 }

    struct DeviceError: Error, CustomStringConvertible {
        let description: String
    }

    private static func check(_ result: Int32) throws {
        if result < 0 { throw DeviceError(description: String(cString: weir_nft_last_error())) }
    }

    func create() throws { try Self.check(weir_wg_link_create(interface)) }

    func destroy() { _ = weir_link_delete(interface) }

    func get() throws -> DeviceState {
        var device = weir_wg_device()
        try Self.check(weir_wg_get(interface, &device))
        defer { weir_wg_device_free(&device) }
        return Self.state(device)
    }

    func apply(_ plan: PeerPlan, purging: Bool, chunk: Int) throws {
        for change in Self.changes(plan, purging: purging, chunk: chunk) {
            try change.withDevice { try Self.check(weir_wg_set(interface, $0)) }
        }
    }

    func remove(peers: [WireGuardKey]) throws {
        guard !peers.isEmpty else { return }
        try Change(peers: peers.map { Change.Peer(publicKey: $0, flags: WEIR_WG_PEER_REMOVE) })
            .withDevice { try Self.check(weir_wg_set(interface, $0)) }
    }

    // MARK: - Plans as netlink changes

    /// One `weir_wg_set` call: device settings (first change only) and peers.
    struct Change: Equatable {
        struct Peer: Equatable {
            var publicKey: WireGuardKey
            var flags: UInt32 = 0
            var presharedKey: [UInt8]?
            var endpoint: (family: UInt8, address: [UInt8], port: UInt16)?
            var persistentKeepalive: UInt16?
            var allowedIPs: [IPNetwork] = []

            static func == (a: Peer, b: Peer) -> Bool {
                a.publicKey == b.publicKey && a.flags == b.flags && a.presharedKey == b.presharedKey && a.persistentKeepalive == b.persistentKeepalive
                    && a.allowedIPs == b.allowedIPs && a.endpoint?.family == b.endpoint?.family && a.endpoint?.address == b.endpoint?.address
                    && a.endpoint?.port == b.endpoint?.port
            }
        }

        var privateKey: WireGuardKey?
        var listenPort: UInt16?
        var fwmark: UInt32?
        var peers: [Peer] = []

        /// The C view of the change, valid inside `body`.
        func withDevice<T>(_ body: (UnsafePointer<weir_wg_device>) throws -> T) rethrows -> T {
            var allocations: [UnsafeMutablePointer<weir_address>] = []
            defer { for allocation in allocations { allocation.deallocate() } }
            var cPeers = peers.map { peer -> weir_wg_peer in
                var c = weir_wg_peer()
                withUnsafeMutableBytes(of: &c.public_key) { $0.copyBytes(from: peer.publicKey.bytes) }
                c.flags = peer.flags
                if let psk = peer.presharedKey {
                    c.has_preshared_key = 1
                    withUnsafeMutableBytes(of: &c.preshared_key) { $0.copyBytes(from: psk) }
                }
                if let endpoint = peer.endpoint {
                    c.endpoint_family = endpoint.family
                    withUnsafeMutableBytes(of: &c.endpoint_address) { $0.copyBytes(from: endpoint.address) }
                    c.endpoint_port = endpoint.port
                }
                if let keepalive = peer.persistentKeepalive {
                    c.has_persistent_keepalive = 1
                    c.persistent_keepalive = keepalive
                }
                if !peer.allowedIPs.isEmpty {
                    let ips = UnsafeMutablePointer<weir_address>.allocate(capacity: peer.allowedIPs.count)
                    allocations.append(ips)
                    for (index, network) in peer.allowedIPs.enumerated() {
                        var address = weir_address()
                        address.family = UInt8(network.isIPv4 ? AF_INET : AF_INET6)
                        address.prefix_len = UInt8(network.prefix)
                        withUnsafeMutableBytes(of: &address.address) { $0.copyBytes(from: network.bytes) }
                        ips[index] = address
                    }
                    c.allowed_ips = ips
                    c.allowed_ip_count = peer.allowedIPs.count
                }
                return c
            }
            return try cPeers.withUnsafeMutableBufferPointer { buffer in
                var device = weir_wg_device()
                if let privateKey {
                    device.has_private_key = 1
                    withUnsafeMutableBytes(of: &device.private_key) { $0.copyBytes(from: privateKey.bytes) }
                }
                if let listenPort {
                    device.has_listen_port = 1
                    device.listen_port = listenPort
                }
                if let fwmark {
                    device.has_fwmark = 1
                    device.fwmark = fwmark
                }
                device.peers = buffer.baseAddress
                device.peer_count = buffer.count
                return try body(&device)
            }
        }
    }

    /// The plan as changes of at most `chunk` peers each, with the same meaning as its UAPI transactions: a
    /// new peer gets what differs from a new peer's defaults, an updated one every setting (and its allowed
    /// IPs replaced), a removed one the remove flag.
    static func changes(_ plan: PeerPlan, purging: Bool, chunk: Int = 500) -> [Change] {
        var peers: [Change.Peer] = []
        for key in plan.remove + (purging ? plan.purge : []) { peers.append(Change.Peer(publicKey: key, flags: WEIR_WG_PEER_REMOVE)) }
        for (desired, updating) in plan.add.map({ ($0, false) }) + plan.update.map({ ($0, true) }) {
            var peer = Change.Peer(publicKey: desired.publicKey)
            if updating { peer.flags = WEIR_WG_PEER_UPDATE_ONLY | WEIR_WG_PEER_REPLACE_ALLOWED_IPS }
            if updating || desired.presharedKey != nil { peer.presharedKey = desired.presharedKey?.bytes ?? [UInt8](repeating: 0, count: 32) }
            if let text = desired.endpoint, let endpoint = Self.endpoint(text) { peer.endpoint = endpoint }
            if updating || desired.persistentKeepalive != 0 { peer.persistentKeepalive = UInt16(clamping: desired.persistentKeepalive) }
            peer.allowedIPs = desired.allowedIPs
            peers.append(peer)
        }
        var changes: [Change] = []
        var index = 0
        repeat {
            var change = Change(peers: Array(peers[index..<min(index + chunk, peers.count)]))
            if index == 0 {
                change.privateKey = plan.setPrivateKey
                change.listenPort = plan.setListenPort.map { UInt16(clamping: $0) }
                change.fwmark = plan.setFwmark
            }
            if change != Change() { changes.append(change) }
            index += chunk
        } while index < peers.count
        return changes
    }

    /// `203.0.113.5:51820` or `[2001:db8::5]:51820`.
    static func endpoint(_ text: String) -> (family: UInt8, address: [UInt8], port: UInt16)? {
        guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
        let host = text[..<colon].trimmingCharacters(in: ["[", "]"])
        guard let bytes = IPNetwork.addressBytes(host) else { return nil }
        return (UInt8(bytes.count == 4 ? AF_INET : AF_INET6), bytes + [UInt8](repeating: 0, count: 16 - bytes.count), port)
    }

    /// The C device as the model both backends share.
    static func state(_ device: weir_wg_device) -> DeviceState {
        var state = DeviceState()
        if device.has_private_key != 0 { state.privateKey = withUnsafeBytes(of: device.private_key) { WireGuardKey(bytes: Array($0)) } }
        state.listenPort = Int(device.listen_port)
        state.fwmark = device.fwmark
        for index in 0..<device.peer_count {
            let c = device.peers[index]
            guard let key = withUnsafeBytes(of: c.public_key, { WireGuardKey(bytes: Array($0)) }) else { continue }
            var peer = PeerState(publicKey: key)
            if c.has_preshared_key != 0 { peer.presharedKey = withUnsafeBytes(of: c.preshared_key) { WireGuardKey(bytes: Array($0)) } }
            let address = withUnsafeBytes(of: c.endpoint_address) { Array($0) }
            if c.endpoint_family == UInt8(AF_INET) {
                peer.endpoint = "\(IPNetwork(bytes: Array(address.prefix(4)), prefix: 32).address):\(c.endpoint_port)"
            } else if c.endpoint_family == UInt8(AF_INET6) {
                peer.endpoint = "[\(IPNetwork(bytes: address, prefix: 128).address)]:\(c.endpoint_port)"
            }
            peer.persistentKeepalive = Int(c.persistent_keepalive)
            for ip in 0..<c.allowed_ip_count {
                let entry = c.allowed_ips[ip]
                let bytes = withUnsafeBytes(of: entry.address) { Array($0) }
                let width = entry.family == UInt8(AF_INET) ? 4 : 16
                peer.allowedIPs.append(IPNetwork(bytes: Array(bytes.prefix(width)), prefix: Int(entry.prefix_len)))
            }
            peer.receiveBytes = c.rx_bytes
            peer.transmitBytes = c.tx_bytes
            peer.lastHandshake = Double(c.last_handshake_sec) + Double(c.last_handshake_nsec) / 1e9
            state.peers.append(peer)
        }
        return state
    }
}
