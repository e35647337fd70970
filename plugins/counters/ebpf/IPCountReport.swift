import CWeirBPF
import Glibc
import WeirCore

/// Turns a snapshot of the counters map into Prometheus samples: the `top_n` addresses with the most bytes
/// (in and out, all interfaces) get their own series; the others are summed into `ip="other"` per interface
/// and direction. Evicted addresses are simply absent from the snapshot, so their series disappear.
struct IPCountReport {
    static let bytes = MetricFamily(
        "weir_ip_bytes_total", .counter,
        help: "Bytes per IP address counted by count.ebpf: IP packet lengths per GSO segment, link-layer headers excluded; direction in arrives at this host, out leaves it.")
    static let packets = MetricFamily(
        "weir_ip_packets_total", .counter,
        help: "Packets per IP address counted by count.ebpf (GSO segments); direction in arrives at this host, out leaves it.")
    static let entries = MetricFamily("weir_ebpf_map_entries", .gauge, help: "Entries in the count.ebpf per-IP map.")
    static let capacity = MetricFamily("weir_ebpf_map_max_entries", .gauge, help: "Capacity of the count.ebpf per-IP map (max_entries).")
    static let evictions = MetricFamily(
        "weir_ebpf_map_evictions_total", .counter,
        help: "Entries the count.ebpf LRU map evicted to make room for new addresses (their counts are lost).")
    static let folded = MetricFamily(
        "weir_ip_other_addresses", .gauge, help: "Addresses beyond top_n whose counts are summed into ip=\"other\".")

    let pipeline: String
    let topN: Int
    let ipv4Prefix: Int
    let ipv6Prefix: Int

    /// Writes the per-IP families and the map's own gauges for `snapshot`.
    func write(_ snapshot: CountSnapshot, stats: CountStats, maxEntries: Int, interfaceName: (UInt32) -> String, into exposition: inout ExpositionWriter) {
        let selected = topAddresses(snapshot)
        var pipelineLabel: [UInt8] = []
        pipelineLabel.appendLabel("pipeline", pipeline)

        // Per interface: the label text, and the sums of the addresses beyond top_n.
        var interfaces: [UInt32: (label: [UInt8], other: weir_ip_counts, hasOther: Bool)] = [:]
        var bytesBody: [UInt8] = []
        var packetsBody: [UInt8] = []
        bytesBody.reserveCapacity(min(snapshot.count, topN) * 2 * 120)
        packetsBody.reserveCapacity(min(snapshot.count, topN) * 2 * 120)

        for i in 0..<snapshot.count {
            let key = snapshot.keys[i]
            if interfaces[key.ifindex] == nil {
                var label = pipelineLabel
                label.append(UInt8(ascii: ","))
                label.appendLabel("interface", interfaceName(key.ifindex))
                interfaces[key.ifindex] = (label, weir_ip_counts(), false)
            }
            let counts = snapshot.counts[i]
            if let selected, !selected.contains(AddressKey(key)) {
                interfaces[key.ifindex]!.other.add(counts)
                interfaces[key.ifindex]!.hasOther = true
                continue
            }
            var labels = interfaces[key.ifindex]!.label
            labels.append(contentsOf: ",ip=\"".utf8)
            appendAddress(key, to: &labels)
            labels.append(contentsOf: "\",direction=\"".utf8)
            Self.appendSamples(labels: labels, counts, bytes: &bytesBody, packets: &packetsBody)
        }
        var foldedAddresses = 0
        if let selected { foldedAddresses = Set(snapshot.keys.map(AddressKey.init)).count - selected.count }
        for (_, interface) in interfaces.sorted(by: { $0.key < $1.key }) where interface.hasOther {
            var labels = interface.label
            labels.append(contentsOf: ",ip=\"other\",direction=\"".utf8)
            Self.appendSamples(labels: labels, interface.other, bytes: &bytesBody, packets: &packetsBody)
        }
        exposition.write(Self.bytes) { $0.append(contentsOf: bytesBody) }
        exposition.write(Self.packets) { $0.append(contentsOf: packetsBody) }

        let inserts = max(stats.inserts, UInt64(snapshot.count))
        let gauges: [(MetricFamily, UInt64)] = [
            (Self.entries, UInt64(snapshot.count)), (Self.capacity, UInt64(maxEntries)),
            (Self.evictions, inserts - UInt64(snapshot.count)), (Self.folded, UInt64(foldedAddresses)),
        ]
        for (family, value) in gauges {
            exposition.write(family) { $0.appendSample(Array(family.name.utf8), labels: pipelineLabel, value: value) }
        }
    }

    private static let bytesName = Array("weir_ip_bytes_total{".utf8)
    private static let packetsName = Array("weir_ip_packets_total{".utf8)

    /// Four samples for one address: bytes and packets, in and out. `labels` ends with `direction="`.
    private static func appendSamples(labels: [UInt8], _ counts: weir_ip_counts, bytes: inout [UInt8], packets: inout [UInt8]) {
        for (direction, byteCount, packetCount) in [("in\"} ", counts.in_bytes, counts.in_packets), ("out\"} ", counts.out_bytes, counts.out_packets)] {
            bytes.append(contentsOf: bytesName)
            bytes.append(contentsOf: labels)
            bytes.append(contentsOf: direction.utf8)
            bytes.appendDecimal(byteCount)
            bytes.append(UInt8(ascii: "\n"))
            packets.append(contentsOf: packetsName)
            packets.append(contentsOf: labels)
            packets.append(contentsOf: direction.utf8)
            packets.appendDecimal(packetCount)
            packets.append(UInt8(ascii: "\n"))
        }
    }

    /// The addresses with the most bytes, or nil when there are no more than `topN` (all are exported).
    func topAddresses(_ snapshot: CountSnapshot) -> Set<AddressKey>? {
        guard snapshot.count > topN else { return nil }
        var totals: [AddressKey: UInt64] = [:]
        totals.reserveCapacity(snapshot.count)
        for i in 0..<snapshot.count {
            let counts = snapshot.counts[i]
            totals[AddressKey(snapshot.keys[i]), default: 0] &+= counts.in_bytes &+ counts.out_bytes
        }
        guard totals.count > topN else { return nil }
        // Ties broken by address, so the selection is stable from scrape to scrape.
        let ranked = totals.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
        return Set(ranked.prefix(topN).map(\.key))
    }

    /// `192.0.2.7`, `2001:db8::1`, or `192.0.2.0/24` when addresses are rolled up to a prefix.
    func appendAddress(_ key: weir_ip_key, to output: inout [UInt8]) {
        var text = (Int8(0), (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0)))  // ≥ INET6_ADDRSTRLEN
        var address = key.addr
        let family = key.family == 4 ? AF_INET : AF_INET6
        withUnsafeMutableBytes(of: &text) { buffer in
            let chars = buffer.baseAddress!.assumingMemoryBound(to: CChar.self)
            withUnsafeBytes(of: &address) { bytes in
                if inet_ntop(family, bytes.baseAddress, chars, socklen_t(buffer.count)) != nil {
                    output.append(contentsOf: UnsafeRawBufferPointer(start: chars, count: strlen(chars)))
                }
            }
        }
        let prefix = key.family == 4 ? ipv4Prefix : ipv6Prefix
        if prefix < (key.family == 4 ? 32 : 128) {
            output.append(UInt8(ascii: "/"))
            output.appendDecimal(UInt64(prefix))
        }
    }
}

/// An address (family and 16 bytes) as a hashable value, for grouping entries of several interfaces.
struct AddressKey: Hashable, Comparable {
    let family: UInt8
    let high: UInt64
    let low: UInt64

    init(_ key: weir_ip_key) {
        var address = key.addr
        (high, low) = withUnsafeBytes(of: &address) { ($0.loadUnaligned(fromByteOffset: 0, as: UInt64.self).bigEndian, $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self).bigEndian) }
        family = key.family
    }

    static func < (a: AddressKey, b: AddressKey) -> Bool { (a.family, a.high, a.low) < (b.family, b.high, b.low) }
}

extension weir_ip_counts {
    mutating func add(_ other: weir_ip_counts) {
        in_bytes &+= other.in_bytes
        in_packets &+= other.in_packets
        out_bytes &+= other.out_bytes
        out_packets &+= other.out_packets
    }
}
