import Foundation
import WeirCore
import WeirVPN

/// What the stage keeps in `state_dir/wireguard/PIPELINE.json` (0600): the interface it owns, the addresses
/// it gave peers from the pool (an address never moves while its peer exists), the key pairs it generated
/// for peers, and the peers it configured (whose removal from the device is intended, unlike a purge).
struct WireGuardState: Codable, Sendable, Equatable {
    var interface: String
    /// `kernel` or `userspace`: the backend that created the interface (nil in state written before the
    /// kernel backend existed: userspace).
    var backend: String?
    /// The policy routing table of a full tunnel (a peer with a default route), for removing its rules.
    var fullTunnelTable: UInt32?
    /// Peer name → its addresses from the pool ("10.8.0.2/32").
    var addresses: [String: [String]] = [:]
    /// Peer name → the private key the agent generated for it (base64).
    var generatedKeys: [String: String] = [:]
    /// Public keys (base64) of the peers the last apply configured.
    var configured: [String] = []
    /// Peer name → its transfer in the current quota period (every peer is counted; only those with a
    /// quota are limited). Survives restarts and reloads with the file.
    var usage: [String: Usage] = [:]

    struct Usage: Codable, Sendable, Equatable {
        /// Unix seconds when the period began.
        var periodStart: Double
        /// Bytes received and sent in the period.
        var used: UInt64
        /// The device's counters at the last reading (they restart from 0 when the peer is added again).
        var lastReceive: UInt64
        var lastTransmit: UInt64
    }

    /// Adds what each peer moved since the last reading to its usage; a new period starts from zero.
    mutating func account(_ device: DeviceState, names: [WireGuardKey: String]) {
        var seen: Set<String> = []
        for peer in device.peers {
            guard let name = names[peer.publicKey] else { continue }
            seen.insert(name)
            var usage = usage[name] ?? Usage(periodStart: 0, used: 0, lastReceive: 0, lastTransmit: 0)
            // Counters that went down belong to a new session of the device: all of it is new.
            let received = peer.receiveBytes >= usage.lastReceive ? peer.receiveBytes - usage.lastReceive : peer.receiveBytes
            let sent = peer.transmitBytes >= usage.lastTransmit ? peer.transmitBytes - usage.lastTransmit : peer.transmitBytes
            usage.used &+= received &+ sent
            usage.lastReceive = peer.receiveBytes
            usage.lastTransmit = peer.transmitBytes
            self.usage[name] = usage
        }
        // Peers off the device (disabled, or not added yet) start from zero counters when they come back.
        for name in usage.keys where !seen.contains(name) {
            usage[name]?.lastReceive = 0
            usage[name]?.lastTransmit = 0
        }
    }

    /// Starts a new period for peers whose period (by their quota, monthly otherwise) has ended, and drops
    /// the usage of peers no longer configured.
    mutating func rollPeriods(_ peers: [WireGuardConfig.Peer], now: Date) {
        usage = usage.filter { name, _ in peers.contains { $0.name == name } }
        for peer in peers {
            let start = Self.periodStart(peer.quota?.period ?? .month, containing: now).timeIntervalSince1970
            var usage = usage[peer.name] ?? Usage(periodStart: start, used: 0, lastReceive: 0, lastTransmit: 0)
            if usage.periodStart < start {
                usage.periodStart = start
                usage.used = 0
            }
            self.usage[peer.name] = usage
        }
    }

    /// Whether a peer has used up its quota.
    func isOverQuota(_ peer: WireGuardConfig.Peer) -> Bool {
        guard let quota = peer.quota else { return false }
        return (usage[peer.name]?.used ?? 0) >= quota.limit
    }

    /// The start (UTC) of the day, ISO week (Monday) or month that contains `date`.
    static func periodStart(_ period: WireGuardConfig.Quota.Period, containing date: Date) -> Date {
        var calendar = Calendar(identifier: .iso8601)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        switch period {
        case .day: return calendar.startOfDay(for: date)
        case .week: return calendar.dateInterval(of: .weekOfYear, for: date)?.start ?? calendar.startOfDay(for: date)
        case .month: return calendar.dateInterval(of: .month, for: date)?.start ?? calendar.startOfDay(for: date)
        }
    }

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
                guard let address = AddressPool.nextFree(in: network, taken: taken) else {
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
                if state.fullTunnelTable != nil { _ = try? TunnelRouting.convergeRules([]) }
            }
            unlink(path(stateDirectory, pipeline: name))
            unlink(defaultKeyPath(stateDirectory, pipeline: name))
            PeerAddressBook.remove(stateDirectory: stateDirectory, pipeline: name)
        }
    }
}
