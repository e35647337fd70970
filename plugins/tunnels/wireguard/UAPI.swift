import WeirCore
import WeirVPN

/// A WireGuard device as its UAPI (`get=1`) describes it — the same model the kernel's generic netlink
/// family returns, so both backends reconcile through one plan.
struct DeviceState: Sendable, Equatable {
    var privateKey: WireGuardKey?
    var listenPort = 0
    var fwmark: UInt32 = 0
    var peers: [PeerState] = []
}

struct PeerState: Sendable, Equatable {
    var publicKey: WireGuardKey
    var presharedKey: WireGuardKey?
    var endpoint: String?
    var persistentKeepalive = 0
    var allowedIPs: [IPNetwork] = []
    var receiveBytes: UInt64 = 0
    var transmitBytes: UInt64 = 0
    /// Unix seconds of the latest handshake; 0 for never.
    var lastHandshake: Double = 0
}

/// The cross-platform userspace API (wireguard.com/xplatform): `key=value` lines, keys in hex.
enum UAPI {
    struct ProtocolError: Error, CustomStringConvertible {
        let description: String
    }

    /// Parses the answer to `get=1` (up to and excluding `errno=`).
    static func parseGet(_ text: String) throws -> DeviceState {
        var device = DeviceState()
        var peer: PeerState?
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            guard let equals = line.firstIndex(of: "=") else { throw ProtocolError(description: "malformed line \"\(line)\"") }
            let key = String(line[..<equals]), value = String(line[line.index(after: equals)...])
            func key32() throws -> WireGuardKey {
                guard let parsed = WireGuardKey(hex: value) else { throw ProtocolError(description: "bad key for \(key)") }
                return parsed
            }
            switch key {
            case "errno":
                guard value == "0" else { throw ProtocolError(description: "device answered errno=\(value)") }
            case "private_key": device.privateKey = try key32()
            case "listen_port": device.listenPort = Int(value) ?? 0
            case "fwmark": device.fwmark = UInt32(value) ?? 0
            case "public_key":
                if let peer { device.peers.append(peer) }
                peer = PeerState(publicKey: try key32())
            default:
                guard peer != nil else { continue }  // device keys this model does not use
                switch key {
                case "preshared_key":
                    let psk = try key32()
                    peer?.presharedKey = psk.bytes.allSatisfy { $0 == 0 } ? nil : psk
                case "endpoint": peer?.endpoint = value
                case "persistent_keepalive_interval": peer?.persistentKeepalive = Int(value) ?? 0
                case "allowed_ip": peer?.allowedIPs.append(try IPNetwork.parse(value))
                case "rx_bytes": peer?.receiveBytes = UInt64(value) ?? 0
                case "tx_bytes": peer?.transmitBytes = UInt64(value) ?? 0
                case "last_handshake_time_sec": peer?.lastHandshake += Double(value) ?? 0
                case "last_handshake_time_nsec": peer?.lastHandshake += (Double(value) ?? 0) / 1e9
                default: continue
                }
            }
        }
        if let peer { device.peers.append(peer) }
        return device
    }
}
