import Foundation
import WeirCore

/// A peer's client configuration in wg-quick format, for `weir wireguard config`: its addresses and
/// (when the agent generated its keys) its private key, and the server as its one peer.
public enum ClientConfiguration {
    public struct ExportError: Error, CustomStringConvertible {
        public let description: String
    }

    /// `stateDirectory` is the agent's; the stage must have run once (keys and addresses live there).
    public static func render(_ config: WireGuardConfig, pipeline: String, peer name: String, stateDirectory: String) throws -> String {
        guard let peer = config.peers.first(where: { $0.name == name }) else {
            throw ExportError(description: "pipeline \"\(pipeline)\" has no peer \"\(name)\" (peers: \(config.peers.map(\.name).joined(separator: ", ")))")
        }
        guard let endpoint = config.endpoint else {
            throw ExportError(description: "the wireguard stage of \"\(pipeline)\" has no endpoint: clients would not know where to dial")
        }
        guard let state = WireGuardState.load(stateDirectory, pipeline: pipeline) else {
            throw ExportError(description: "no state for \"\(pipeline)\" in \(stateDirectory): start the agent with this pipeline first")
        }
        let keyPath = config.privateKeyFile ?? WireGuardState.defaultKeyPath(stateDirectory, pipeline: pipeline)
        let serverKey: WireGuardKey
        do { serverKey = try WireGuard.readKey(keyPath) } catch { throw ExportError(description: "\(error)") }
        let addresses = peer.allowedIPs.isEmpty ? (state.addresses[name] ?? []) : peer.allowedIPs.map(\.description)
        guard !addresses.isEmpty else { throw ExportError(description: "peer \"\(name)\" has no address yet: start the agent first") }

        var lines = ["[Interface]"]
        if peer.publicKey == nil {
            guard let privateKey = state.generatedKeys[name] else {
                throw ExportError(description: "peer \"\(name)\" has no generated key yet: start the agent first")
            }
            lines.append("PrivateKey = \(privateKey)")
        } else {
            lines.append("# PrivateKey = the private key of \(peer.publicKey!), which only its owner has")
        }
        lines.append("Address = " + addresses.map { address in
            // A single address from the pool is the host's /32 (or /128) in the tunnel.
            (try? IPNetwork.parse(address)).map { "\($0.address)/\($0.prefix)" } ?? address
        }.joined(separator: ", "))
        lines += ["", "[Peer]", "PublicKey = \(serverKey.publicKey)"]
        if let file = peer.presharedKeyFile {
            do { lines.append("PresharedKey = \(try WireGuard.readKey(file).base64)") } catch { throw ExportError(description: "\(error)") }
        }
        lines.append("Endpoint = \(endpoint)")
        lines.append("AllowedIPs = 0.0.0.0/0, ::/0")
        if peer.persistentKeepalive > 0 { lines.append("PersistentKeepalive = \(peer.persistentKeepalive)") }
        return lines.joined(separator: "\n") + "\n"
    }
}
