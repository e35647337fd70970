import Foundation
import WeirCore

/// What the stage keeps in `state_dir/wireguard/PIPELINE.json` (0600): the interface it owns, the addresses
/// it gave peers from the pool (an address never moves while its peer exists), the key pairs it generated
/// for peers, and the peers it configured (whose removal from the device is intended, unlike a purge).
struct WireGuardState: Codable, Sendable, Equatable {
    var interface: String
    /// Peer name → its addresses from the pool ("10.8.0.2/32").
    var addresses: [String: [String]] = [:]
    /// Peer name → the private key the agent generated for it (base64).
    var generatedKeys: [String: String] = [:]
    /// Public keys (base64) of the peers the last apply configured.
    var configured: [String] = []

    static func directory(_ stateDirectory: String) -> String { stateDirectory + "/wireguard" }
    static func path(_ stateDirectory: String, pipeline: String) -> String { directory(stateDirectory) + "/\(pipeline).json" }
    /// The interface's private key when the configuration names no file.
    static func defaultKeyPath(_ stateDirectory: String, pipeline: String) -> String { directory(stateDirectory) + "/\(pipeline).key" }

    static func load(_ stateDirectory: String, pipeline: String) -> WireGuardState? {
        guard let data = FileManager.default.contents(atPath: path(stateDirectory, pipeline: pipeline)) else { return nil }
        return try? JSONDecoder().decode(WireGuardState.self, from: data)
    }

    func save(_ stateDirectory: String, pipeline: String) throws {
        try StateFiles.writeJSON(self, to: Self.path(stateDirectory, pipeline: pipeline))
    }

    /// Gives each peer without configured addresses its pool addresses: the remembered ones, else the next
    /// free address of each pool network (not the network's first address, not the interface's, not another
    /// peer's). Names no longer configured give their addresses back.
    mutating func allocate(peers: [WireGuardConfig.Peer], pool: [IPNetwork], interfaceAddresses: [InterfaceAddress]) throws -> [String: [IPNetwork]] {
        let pooled = peers.filter { $0.allowedIPs.isEmpty }.map(\.name)
        addresses = addresses.filter { pooled.contains($0.key) }
        var taken = Set(interfaceAddresses.map(\.address))
        for peer in peers { taken.formUnion(peer.allowedIPs.filter(\.isSingleAddress)) }
        for list in addresses.values { taken.formUnion(list.compactMap { try? IPNetwork.parse($0) }) }
        var result: [String: [IPNetwork]] = [:]
        for name in pooled {
            if let remembered = addresses[name] {
                result[name] = remembered.compactMap { try? IPNetwork.parse($0) }
                continue
            }
            var given: [IPNetwork] = []
            for network in pool {
                guard let address = Self.nextFree(in: network, taken: taken) else {
                    throw AllocationError(description: "the pool \(network) has no free address left for peer \"\(name)\"")
                }
                taken.insert(address)
                given.append(address)
            }
            addresses[name] = given.map(\.description)
            result[name] = given
        }
        return result
    }

    struct AllocationError: Error, CustomStringConvertible {
        let description: String
    }

    /// The lowest address of `network` after its first that is not taken (and for IPv4 not its broadcast).
    static func nextFree(in network: IPNetwork, taken: Set<IPNetwork>) -> IPNetwork? {
        let width = network.width
        let hostBits = width - network.prefix
        let limit = hostBits >= 20 ? 1 << 20 : (1 << hostBits) - (network.isIPv4 ? 1 : 0)
        var candidate = network.bytes
        for offset in 1..<max(limit, 1) {
            // network + offset, big-endian.
            candidate = network.bytes
            var carry = offset
            var index = candidate.count - 1
            while carry > 0, index >= 0 {
                let sum = Int(candidate[index]) + (carry & 0xFF)
                candidate[index] = UInt8(sum & 0xFF)
                carry = (carry >> 8) + (sum >> 8)
                index -= 1
            }
            let address = IPNetwork(bytes: candidate, prefix: width)
            if !taken.contains(address) { return address }
        }
        return nil
    }

    /// Removes the interfaces and state of pipelines that no longer have a wireguard stage (removed while
    /// the agent was down, or a kill -9 between a reload and the retirement).
    static func sweep(keeping pipelines: Set<String>, stateDirectory: String) {
        let directory = directory(stateDirectory)
        StateFiles.removeInterruptedWrites(in: directory)
        let names = StateFiles.names(in: directory)
        let kept = Set(names.filter(pipelines.contains).compactMap { load(stateDirectory, pipeline: $0)?.interface })
        for name in names where !pipelines.contains(name) {
            if let state = load(stateDirectory, pipeline: name), !kept.contains(state.interface) {
                UserspaceDevice(interface: state.interface).destroy()
            }
            unlink(path(stateDirectory, pipeline: name))
            unlink(defaultKeyPath(stateDirectory, pipeline: name))
        }
    }
}
