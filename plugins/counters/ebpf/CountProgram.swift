import CWeirBPF
import Foundation

/// A failed libbpf or kernel call, with libbpf's own explanation when it gave one.
struct BPFError: Error, CustomStringConvertible {
    let code: Int32
    let description: String

    /// Wraps a negative-errno result of the C layer.
    static func check(_ result: Int32) throws(BPFError) -> Int32 {
        if result < 0 { throw BPFError(code: -result, description: String(cString: weir_bpf_last_error())) }
        return result
    }

    static func last(_ code: Int32 = EINVAL) -> BPFError {
        BPFError(code: code, description: String(cString: weir_bpf_last_error()))
    }
}

/// The compiled `bpf/weir_count.bpf.c`, embedded at build time by BPFObjectPlugin.
enum CountObjectImage {
    static let bytes: [UInt8] = {
        guard let data = Data(base64Encoded: weirCountObject) else { preconditionFailure("embedded eBPF object is not base64") }
        return Array(data)
    }()
}

/// The loaded count programs and their two pinned maps. Closing it unloads the programs (once nothing is
/// attached) and closes the map descriptors; the pins stay.
///
/// Unchecked Sendable: the stage only touches it while holding its state lock.
final class CountProgram: @unchecked Sendable {
    private var handle: OpaquePointer?
    /// The counters map was created by this load rather than reused from its pin.
    let createdMaps: Bool

    init(config: weir_count_config, maxEntries: Int, pinDirectory: String) throws(BPFError) {
        var config = config
        var created: Int32 = 0
        let handle = CountObjectImage.bytes.withUnsafeBytes { image in
            weir_count_load(image.baseAddress, image.count, &config, UInt32(maxEntries), pinDirectory, &created)
        }
        guard let handle else { throw BPFError.last() }
        self.handle = handle
        self.createdMaps = created != 0
    }

    deinit { close() }

    func close() {
        if let handle { weir_count_close(handle) }
        handle = nil
    }

    func programFD(ingress: Bool) -> Int32 { handle.map { weir_count_program_fd($0, ingress ? 1 : 0) } ?? -1 }
    var countsFD: Int32 { handle.map { weir_count_counts_fd($0) } ?? -1 }
    var statsFD: Int32 { handle.map { weir_count_stats_fd($0) } ?? -1 }
}

/// Entries read from a `weir_ip_counts` map, per-CPU values summed.
struct CountSnapshot {
    var keys: [weir_ip_key] = []
    var counts: [weir_ip_counts] = []
    var count: Int { keys.count }

    /// Reads up to `capacity` entries of the map behind `fd`.
    static func read(fd: Int32, capacity: Int) throws(BPFError) -> CountSnapshot {
        var keys = [weir_ip_key](repeating: weir_ip_key(), count: capacity)
        var counts = [weir_ip_counts](repeating: weir_ip_counts(), count: capacity)
        var read: UInt32 = 0
        let result = keys.withUnsafeMutableBufferPointer { keys in
            counts.withUnsafeMutableBufferPointer { counts in
                weir_counts_read(fd, keys.baseAddress, counts.baseAddress, UInt32(capacity), &read)
            }
        }
        _ = try BPFError.check(result)
        keys.removeSubrange(Int(read)...)
        counts.removeSubrange(Int(read)...)
        return CountSnapshot(keys: keys, counts: counts)
    }

    /// Writes the entries into the map behind `fd`.
    func write(fd: Int32) throws(BPFError) {
        let result = keys.withUnsafeBufferPointer { keys in
            counts.withUnsafeBufferPointer { counts in
                weir_counts_write(fd, keys.baseAddress, counts.baseAddress, UInt32(keys.count))
            }
        }
        _ = try BPFError.check(result)
    }
}

extension CountSnapshot {
    /// Moves the entries counted on ifindex `old` to `new` (the same interface, deleted and created again),
    /// adding to what `new` already holds, so the interface's series carry on. Run before the programs are
    /// attached to `new`: nothing else writes its entries meanwhile. Returns the number of entries moved.
    static func moveInterface(fd: Int32, capacity: Int, from old: UInt32, to new: UInt32) throws(BPFError) -> Int {
        let snapshot = try read(fd: fd, capacity: capacity)
        func bytes(_ key: weir_ip_key) -> [UInt8] { withUnsafeBytes(of: key) { Array($0) } }
        var totals: [[UInt8]: (key: weir_ip_key, counts: weir_ip_counts)] = [:]
        for (key, counts) in zip(snapshot.keys, snapshot.counts) where key.ifindex == new { totals[bytes(key)] = (key, counts) }
        var moved: [weir_ip_key] = []
        for (key, counts) in zip(snapshot.keys, snapshot.counts) where key.ifindex == old {
            var renamed = key
            renamed.ifindex = new
            totals[bytes(renamed), default: (renamed, weir_ip_counts())].counts.add(counts)
            moved.append(key)
        }
        guard !moved.isEmpty else { return 0 }
        let merged = Array(totals.values)
        try CountSnapshot(keys: merged.map(\.key), counts: merged.map(\.counts)).write(fd: fd)
        for var key in moved { _ = try BPFError.check(weir_map_delete(fd, &key)) }
        return moved.count
    }
}

/// The program's own statistics (`weir_ebpf_stats`), summed over CPUs.
struct CountStats {
    var inserts: UInt64
    var insertErrors: UInt64

    static func read(fd: Int32) throws(BPFError) -> CountStats {
        var totals = [UInt64](repeating: 0, count: Int(WEIR_STAT_COUNT.rawValue))
        _ = try BPFError.check(totals.withUnsafeMutableBufferPointer { weir_stats_read(fd, $0.baseAddress) })
        return CountStats(inserts: totals[Int(WEIR_STAT_INSERTS.rawValue)], insertErrors: totals[Int(WEIR_STAT_INSERT_ERRORS.rawValue)])
    }

    static func setInserts(_ value: UInt64, fd: Int32) throws(BPFError) {
        _ = try BPFError.check(weir_stats_write(fd, UInt32(WEIR_STAT_INSERTS.rawValue), value))
    }
}
