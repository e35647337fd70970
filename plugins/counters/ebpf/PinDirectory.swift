import CWeirBPF
import Foundation
import NIOConcurrencyHelpers
import WeirCore

/// Where one count stage pins its maps: `<bpf_pin_dir>/<pipeline>/count-v<layout>-<meaning>-<max_entries>/`.
///
/// The name carries everything a pinned map must match to be reused, so a changed definition gets a fresh
/// directory instead of a load error; `migrate` then carries the old counters over when they mean the same
/// thing (only the size changed), and retired directories are removed.
struct PinDirectory: Sendable {
    let pipelineDirectory: String
    let name: String
    var path: String { pipelineDirectory + "/" + name }

    static let layoutVersion = Int(WEIR_COUNT_LAYOUT_VERSION)

    init(root: String, pipeline: String, meaning: String, maxEntries: Int) {
        pipelineDirectory = root + "/" + pipeline
        name = "count-v\(Self.layoutVersion)-\(meaning)-\(maxEntries)"
    }

    /// Same layout and meaning, other size: counters there can be carried over.
    private var compatiblePrefix: String { String(name[..<name.lastIndex(of: "-")!]) + "-" }

    /// Makes sure the root is on a bpf filesystem (mounting one when it is missing) and creates the directory.
    func create() throws {
        try Self.ensureBPFFilesystem(at: URL(fileURLWithPath: pipelineDirectory).deletingLastPathComponent().path)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    /// Other count directories of this pipeline: those whose counters can be carried over (newest first, in
    /// use by a running stage or not — a stage being replaced on reload still holds its own), and those no
    /// running stage uses, which can go.
    func siblings() -> (compatible: [String], unused: [String]) {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: pipelineDirectory)) ?? [])
            .filter { $0 != name && $0.hasPrefix("count-") }
        let compatible = names.filter { $0.hasPrefix(compatiblePrefix) }.sorted { modified($0) > modified($1) }
        let unused = names.filter { !PinUsers.shared.isUsed(pipelineDirectory + "/" + $0) }
        return (compatible.map { pipelineDirectory + "/" + $0 }, unused.map { pipelineDirectory + "/" + $0 })
    }

    private func modified(_ name: String) -> Date {
        let attributes = try? FileManager.default.attributesOfItem(atPath: pipelineDirectory + "/" + name)
        return attributes?[.modificationDate] as? Date ?? .distantPast
    }

    /// Copies the counters pinned in `directory` into the freshly created maps, the busiest entries first
    /// when the new map is smaller. Entries that do not fit are counted as evictions.
    static func migrate(from directory: String, countsFD: Int32, statsFD: Int32, maxEntries: Int) throws {
        let oldCounts = try BPFError.check(weir_pinned_open(directory + "/weir_ip_counts"))
        defer { close(oldCounts) }
        let oldStats = try BPFError.check(weir_pinned_open(directory + "/weir_ebpf_stats"))
        defer { close(oldStats) }
        let capacity = Int(try BPFError.check(weir_map_max_entries(oldCounts)))
        var snapshot = try CountSnapshot.read(fd: oldCounts, capacity: capacity)
        if snapshot.count > maxEntries {
            let order = snapshot.counts.indices.sorted {
                snapshot.counts[$0].in_bytes &+ snapshot.counts[$0].out_bytes > snapshot.counts[$1].in_bytes &+ snapshot.counts[$1].out_bytes
            }.prefix(maxEntries)
            snapshot = CountSnapshot(keys: order.map { snapshot.keys[$0] }, counts: order.map { snapshot.counts[$0] })
        }
        try snapshot.write(fd: countsFD)
        // Every entry the old map ever held stays an insert, so evictions = inserts - entries keeps counting.
        let stats = try CountStats.read(fd: oldStats)
        try CountStats.setInserts(max(stats.inserts, UInt64(snapshot.count)), fd: statsFD)
    }

    /// Unpins the maps and removes the directory, then the pipeline's directory and `bpf_pin_dir` once empty
    /// (the last stage removed leaves nothing; `create` makes them again).
    static func remove(_ directory: String) {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for file in files { unlink(directory + "/" + file) }
        rmdir(directory)
        let pipelineDirectory = URL(fileURLWithPath: directory).deletingLastPathComponent()
        if rmdir(pipelineDirectory.path) == 0 { rmdir(pipelineDirectory.deletingLastPathComponent().path) }  // each fails unless empty
    }

    /// Removes every count directory no running stage uses — of pipelines not in `keeping`, and of kept ones
    /// (a kill -9 between carrying counters over and removing the old directory leaves one) — then pipeline
    /// directories and the root once empty. Touches nothing that is not Weir's (only `<pipeline>/count-*`
    /// directories, and empty directories) and never mounts anything. Runs after the stages started, so what
    /// they use is registered.
    static func sweep(root: String, keeping: Set<String>) {
        guard let pipelines = try? FileManager.default.contentsOfDirectory(atPath: root) else { return }
        for pipeline in pipelines {
            let directory = root + "/" + pipeline
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            for entry in entries where entry.hasPrefix("count-") && !PinUsers.shared.isUsed(directory + "/" + entry) {
                remove(directory + "/" + entry)
            }
            if !keeping.contains(pipeline) { rmdir(directory) }  // fails unless empty
        }
        if keeping.isEmpty { rmdir(root) }  // fails unless empty
    }

    struct MountError: Error, CustomStringConvertible {
        let description: String
    }

    /// Pins need a bpf filesystem. `/sys/fs/bpf` is its usual mount point (systemd mounts it; minimal systems
    /// and containers may not): paths under it get a bpffs there, other paths one of their own.
    static func ensureBPFFilesystem(at root: String) throws {
        if FileManager.default.fileExists(atPath: root), try BPFError.check(weir_bpffs_check(root)) == 1 { return }
        let mountPoint = root == "/sys/fs/bpf" || root.hasPrefix("/sys/fs/bpf/") ? "/sys/fs/bpf" : root
        if !FileManager.default.fileExists(atPath: mountPoint) {
            try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        }
        if try BPFError.check(weir_bpffs_check(mountPoint)) != 1 {
            do {
                _ = try BPFError.check(weir_bpffs_mount(mountPoint))
            } catch {
                throw MountError(description: "\(root) is not on a bpf filesystem and mounting one failed: \(error)")
            }
        }
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }
}

/// Which pin directories the stages of this process use: a stage retired on reload removes its directory
/// only when no other stage uses it — its successor with the same map definition does.
enum PinUsers {
    static let shared = SharedStateUsers()
}
