import Foundation

/// A stage that gives names to peers (the `wireguard` stage's users), so other stages of its pipeline can
/// use a name where an address is expected (`enforce.nftables` profiles: `{peer: alice, ...}`).
public protocol NamesPeers {
    var peerNames: [String] { get }
}

/// What every stage that names peers (and every stage that refers to them) accepts as a peer's name.
public enum PeerNames {
    /// 1-64 letters, digits, - _ . @.
    public static func isValid(_ name: String) -> Bool {
        (1...64).contains(name.count) && name.allSatisfy { $0.isLetter || $0.isNumber || "-_.@".contains($0) }
    }

    /// `pipelineError` of a stage that refers to peers by name: nil when the pipeline's peer-naming stages
    /// have them all, else a message naming the unknown ones after `what` ("profiles", "groups").
    public static func unknownError(_ named: [String], in stages: [any StageConfig], what: String) -> String? {
        guard !named.isEmpty else { return nil }
        let known = Set(stages.compactMap { $0 as? any NamesPeers }.flatMap(\.peerNames))
        let unknown = named.filter { !known.contains($0) }
        return unknown.isEmpty ? nil : "\(what) name peers this pipeline's wireguard stage does not have: \(unknown.joined(separator: ", "))"
    }
}

/// The addresses of named peers, published by the stage that names them in `state_dir/peers/PIPELINE.json`
/// whenever they change (pool addresses are only known once that stage ran), and read by the stages that
/// refer to peers by name when they start and reconcile.
public enum PeerAddressBook {
    public static func path(stateDirectory: String, pipeline: String) -> String { "\(stateDirectory)/peers/\(pipeline).json" }

    public static func publish(_ addresses: [String: [IPNetwork]], stateDirectory: String, pipeline: String) throws {
        let text = addresses.mapValues { $0.map(\.description).sorted() }
        let path = path(stateDirectory: stateDirectory, pipeline: pipeline)
        if read(path) == text { return }
        try StateFiles.writeJSON(text, to: path)
    }

    /// Every peer's addresses; empty when nothing was published yet.
    public static func addresses(stateDirectory: String, pipeline: String) -> [String: [IPNetwork]] {
        (read(path(stateDirectory: stateDirectory, pipeline: pipeline)) ?? [:]).mapValues { $0.compactMap { try? IPNetwork.parse($0) } }
    }

    public static func remove(stateDirectory: String, pipeline: String) {
        unlink(path(stateDirectory: stateDirectory, pipeline: pipeline))
    }

    private static func read(_ path: String) -> [String: [String]]? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return try? JSONDecoder().decode([String: [String]].self, from: data)
    }
}
