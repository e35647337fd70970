import Foundation
import WeirCore
import WeirVPN

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
        if let key = config.privateKey {
            serverKey = key
        } else {
            do { serverKey = try WireGuard.readKey(keyPath) } catch { throw ExportError(description: "\(error)") }
        }
        let addresses = peer.allowedIPs.isEmpty ? (state.addresses[name] ?? []) : peer.allowedIPs.map(\.description)
        guard !addresses.isEmpty else { throw ExportError(description: "peer \"\(name)\" has no address yet: start the agent first") }

        var file = WireGuardClientFile(
            privateKey: nil, publicKey: peer.publicKey, addresses: addresses.compactMap { try? IPNetwork.parse($0) },
            serverPublicKey: serverKey.publicKey, endpoint: endpoint.description, persistentKeepalive: peer.persistentKeepalive)
        if peer.publicKey == nil {
            guard let privateKey = state.generatedKeys[name] else {
                throw ExportError(description: "peer \"\(name)\" has no generated key yet: start the agent first")
            }
            file.privateKey = privateKey
        }
        if let keyFile = peer.presharedKeyFile {
            do { file.presharedKey = try WireGuard.readKey(keyFile).base64 } catch { throw ExportError(description: "\(error)") }
        }
        return file.text
    }
}
