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
        let selection = select(snapshot)
        var pipelineLabel: [UInt8] = []
        pipelineLabel.appendLabel("pipeline", pipeline)

        // Per interface (a handful): the label text, and the sums of the addresses beyond top_n.
        var interfaces: [(ifindex: UInt32, label: [UInt8], other: weir_ip_counts, hasOther: Bool)] = []
        func slot(_ ifindex: UInt32) -> Int {
            if let found = interfaces.firstIndex(where: { $0.ifindex == ifindex }) { return found }
            var label = pipelineLabel
            label.append(UInt8(ascii: ","))
            label.appendLabel("interface", interfaceName(ifindex))
            interfaces.append((ifindex, label, weir_ip_counts(), false))
            return interfaces.count - 1
        }

        let exported = selection.map { snapshot.count - $0.foldedEntries } ?? snapshot.count
        var bytesBody: [UInt8] = []
        var packetsBody: [UInt8] = []
        bytesBody.reserveCapacity(exported * 2 * 110 + 1024)
        packetsBody.reserveCapacity(exported * 2 * 110 + 1024)
        var labels: [UInt8] = []
        labels.reserveCapacity(256)
        for i in 0..<snapshot.count {
            let key = snapshot.keys[i]
            let interface = slot(key.ifindex)
            if let selection, !selection.selected[i] {
                interfaces[interface].other.add(snapshot.counts[i])
                interfaces[interface].hasOther = true
                continue
            }
            labels.removeAll(keepingCapacity: true)
            labels.append(contentsOf: interfaces[interface].label)
            labels.append(contentsOf: Self.ipLabel)
            appendAddress(key, to: &labels)
            labels.append(contentsOf: Self.directionLabel)
            Self.appendSamples(labels: labels, snapshot.counts[i], bytes: &bytesBody, packets: &packetsBody)
        }
        for interface in interfaces.sorted(by: { $0.ifindex < $1.ifindex }) where interface.hasOther {
            labels.removeAll(keepingCapacity: true)
            labels.append(contentsOf: interface.label)
            labels.append(contentsOf: ",ip=\"other\",direction=\"".utf8)
            Self.appendSamples(labels: labels, interface.other, bytes: &bytesBody, packets: &packetsBody)
        }
        exposition.append(Self.bytes, lines: bytesBody)
        exposition.append(Self.packets, lines: packetsBody)

        let inserts = max(stats.inserts, UInt64(snapshot.count))
        let gauges: [(MetricFamily, UInt64)] = [
            (Self.entries, UInt64(snapshot.count)), (Self.capacity, UInt64(maxEntries)),
            (Self.evictions, inserts - UInt64(snapshot.count)), (Self.folded, UInt64(selection?.foldedAddresses ?? 0)),
        ]
        for (family, value) in gauges {
            exposition.write(family) { $0.appendSample(Array(family.name.utf8), labels: pipelineLabel, value: value) }
        }
    }

    private static let ipLabel = Array(",ip=\"".utf8)
    private static let directionLabel = Array("\",direction=\"".utf8)
    private static let bytesName = Array("weir_ip_bytes_total{".utf8)
    private static let packetsName = Array("weir_ip_packets_total{".utf8)
    private static let inClose = Array("in\"} ".utf8)
    private static let outClose = Array("out\"} ".utf8)

    /// Four samples for one address: bytes and packets, in and out. `labels` ends with `direction="`.
    private static func appendSamples(labels: [UInt8], _ counts: weir_ip_counts, bytes: inout [UInt8], packets: inout [UInt8]) {
        func line(_ output: inout [UInt8], _ name: [UInt8], _ close: [UInt8], _ value: UInt64) {
            output.append(contentsOf: name)
            output.append(contentsOf: labels)
            output.append(contentsOf: close)
            output.appendDecimal(value)
            output.append(UInt8(ascii: "\n"))
        }
        line(&bytes, bytesName, inClose, counts.in_bytes)
        line(&bytes, bytesName, outClose, counts.out_bytes)
        line(&packets, packetsName, inClose, counts.in_packets)
        line(&packets, packetsName, outClose, counts.out_packets)
    }

    /// Which entries belong to the `topN` addresses with the most bytes (in and out, summed over interfaces),
    /// or nil when there are no more addresses than that and every entry is exported.
    func select(_ snapshot: CountSnapshot) -> (selected: [Bool], foldedAddresses: Int, foldedEntries: Int)? {
        guard snapshot.count > topN else { return nil }
        // Group the entries of one address (one per interface): sort by address, then walk.
        let addresses = snapshot.keys.map(AddressKey.init)
        let byAddress = addresses.indices.sorted { addresses[$0] < addresses[$1] }
        var group = [Int32](repeating: 0, count: snapshot.count)
        var totals: [UInt64] = []
        totals.reserveCapacity(snapshot.count)
        for (position, entry) in byAddress.enumerated() {
            if position == 0 || addresses[entry] != addresses[byAddress[position - 1]] { totals.append(0) }
            group[entry] = Int32(totals.count - 1)
            totals[totals.count - 1] &+= snapshot.counts[entry].in_bytes &+ snapshot.counts[entry].out_bytes
        }
        guard totals.count > topN else { return nil }
        // Groups are numbered in address order, so ties go to the lower address: stable from scrape to scrape.
        let ranked = totals.indices.sorted { totals[$0] != totals[$1] ? totals[$0] > totals[$1] : $0 < $1 }
        var chosen = [Bool](repeating: false, count: totals.count)
        for index in ranked.prefix(topN) { chosen[index] = true }
        let selected = group.map { chosen[Int($0)] }
        return (selected, totals.count - topN, selected.count { !$0 })
    }

    /// `192.0.2.7`, `2001:db8::1`, or `192.0.2.0/24` when addresses are rolled up to a prefix.
    func appendAddress(_ key: weir_ip_key, to output: inout [UInt8]) {
        var address = key.addr
        if key.family == 4 {
            // By hand: a scrape may format tens of thousands of these.
            withUnsafeBytes(of: &address) { bytes in
                for index in 0..<4 {
                    if index > 0 { output.append(UInt8(ascii: ".")) }
                    output.appendDecimal(UInt64(bytes[index]))
                }
            }
        } else {
            var text = (UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0), UInt64(0))  // 48 ≥ INET6_ADDRSTRLEN
            withUnsafeMutableBytes(of: &text) { buffer in
                let chars = buffer.baseAddress!.assumingMemoryBound(to: CChar.self)
                withUnsafeBytes(of: &address) { bytes in
                    if inet_ntop(AF_INET6, bytes.baseAddress, chars, socklen_t(buffer.count)) != nil {
                        output.append(contentsOf: UnsafeRawBufferPointer(start: chars, count: strlen(chars)))
                    }
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
