import CWeirBPF
import Testing
import WeirCore
import WeirStages

@testable import WeirCounters

/// The exposition of count.ebpf, from snapshots built in memory (no kernel needed).
@Suite struct CountEBPFReportTests {
    static func key(_ address: String, ifindex: UInt32) -> weir_ip_key {
        var key = weir_ip_key()
        let parsed = IPAddressBytes(address)!
        key.ifindex = ifindex
        key.family = parsed.family
        withUnsafeMutableBytes(of: &key.addr) { $0.copyBytes(from: parsed.bytes) }
        return key
    }

    static func counts(inBytes: UInt64, outBytes: UInt64) -> weir_ip_counts {
        weir_ip_counts(in_bytes: inBytes, in_packets: inBytes / 100, out_bytes: outBytes, out_packets: outBytes / 100)
    }

    static func render(_ snapshot: CountSnapshot, topN: Int, inserts: UInt64 = 0, ipv4Prefix: Int = 32) -> String {
        let report = IPCountReport(pipeline: "edge", topN: topN, ipv4Prefix: ipv4Prefix, ipv6Prefix: 128)
        var writer = ExpositionWriter()
        report.write(snapshot, stats: CountStats(inserts: inserts, insertErrors: 0), maxEntries: 1024, interfaceName: { "if\($0)" }, into: &writer)
        var output: [UInt8] = []
        writer.render(into: &output)
        return String(decoding: output, as: UTF8.self)
    }

    @Test func everyAddressWhenWithinTopN() {
        let snapshot = CountSnapshot(
            keys: [Self.key("192.0.2.7", ifindex: 2), Self.key("2001:db8::1", ifindex: 3)],
            counts: [Self.counts(inBytes: 1000, outBytes: 200), Self.counts(inBytes: 300, outBytes: 400)])
        let text = Self.render(snapshot, topN: 10, inserts: 5)
        #expect(text.contains(#"weir_ip_bytes_total{pipeline="edge",interface="if2",ip="192.0.2.7",direction="in"} 1000"#))
        #expect(text.contains(#"weir_ip_bytes_total{pipeline="edge",interface="if2",ip="192.0.2.7",direction="out"} 200"#))
        #expect(text.contains(#"weir_ip_packets_total{pipeline="edge",interface="if3",ip="2001:db8::1",direction="out"} 4"#))
        #expect(!text.contains(#"ip="other","#))
        #expect(text.contains(#"weir_ebpf_map_entries{pipeline="edge"} 2"#))
        #expect(text.contains(#"weir_ebpf_map_evictions_total{pipeline="edge"} 3"#), "5 inserts, 2 entries left")
        #expect(text.components(separatedBy: "# TYPE weir_ip_bytes_total counter").count == 2, "one header per family")
    }

    @Test func topNByTotalBytesAcrossInterfacesRestSummedIntoOther() {
        // 10.0.0.1 is busiest only when its two interfaces are added up.
        let snapshot = CountSnapshot(
            keys: [
                Self.key("10.0.0.1", ifindex: 2), Self.key("10.0.0.1", ifindex: 3), Self.key("10.0.0.2", ifindex: 2),
                Self.key("10.0.0.3", ifindex: 2), Self.key("10.0.0.4", ifindex: 3),
            ],
            counts: [
                Self.counts(inBytes: 600, outBytes: 0), Self.counts(inBytes: 600, outBytes: 0), Self.counts(inBytes: 1000, outBytes: 0),
                Self.counts(inBytes: 100, outBytes: 100), Self.counts(inBytes: 50, outBytes: 0),
            ])
        let text = Self.render(snapshot, topN: 2)
        #expect(text.contains(#"ip="10.0.0.1",direction="in"} 600"#))
        #expect(text.contains(#"interface="if3",ip="10.0.0.1""#), "a selected address keeps all its interfaces")
        #expect(text.contains(#"ip="10.0.0.2""#))
        #expect(!text.contains(#"ip="10.0.0.3""#) && !text.contains(#"ip="10.0.0.4""#))
        #expect(text.contains(#"weir_ip_bytes_total{pipeline="edge",interface="if2",ip="other",direction="in"} 100"#))
        #expect(text.contains(#"weir_ip_bytes_total{pipeline="edge",interface="if2",ip="other",direction="out"} 100"#))
        #expect(text.contains(#"weir_ip_bytes_total{pipeline="edge",interface="if3",ip="other",direction="in"} 50"#))
        #expect(text.contains(#"weir_ip_other_addresses{pipeline="edge"} 2"#))
    }

    @Test func prefixRollUpIsVisibleInTheLabel() {
        let snapshot = CountSnapshot(keys: [Self.key("198.51.100.0", ifindex: 2)], counts: [Self.counts(inBytes: 1, outBytes: 1)])
        #expect(Self.render(snapshot, topN: 10, ipv4Prefix: 24).contains(#"ip="198.51.100.0/24""#))
    }

    @Test func decimals() {
        for value: UInt64 in [0, 7, 10, 99, 100, 123_456_789, UInt64.max] {
            var bytes: [UInt8] = []
            bytes.appendDecimal(value)
            #expect(String(decoding: bytes, as: UTF8.self) == String(value))
        }
        var label: [UInt8] = []
        label.appendLabel("k", "a\"b\\c\nd")
        #expect(String(decoding: label, as: UTF8.self) == #"k="a\"b\\c\nd""#)
    }
}

/// count.ebpf's options and where it may stand.
@Suite struct CountEBPFConfigTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    func errors(_ yaml: String) -> [String] {
        do {
            _ = try loader.loadPipelines(yaml: yaml, name: "count.yaml")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func aloneItNeedsInterfaces() {
        let found = errors("pipelines:\n  c:\n    stages:\n      - type: count.ebpf\n        key: local_ip\n")
        #expect(found.count == 1)
        #expect(found.first?.contains("count.yaml:4:9") == true, "\(found)")
        #expect(found.first?.contains("interfaces: required") == true)
    }

    @Test func inAForwardPipelineItMayStandAnywhereButOnlyOnce() throws {
        let ok = """
            pipelines:
              web:
                stages:
                  - type: count.ebpf
                  - type: listen.tcp
                    address: 0.0.0.0:8443
                  - type: connect.tcp
                    addresses: [127.0.0.1:443]
            """
        #expect(errors(ok) == [])
        let twice = ok + "\n      - type: count.ebpf\n        interfaces: [lo]\n"
        #expect(errors(twice).contains { $0.contains("at most one count.ebpf") }, "\(errors(twice))")
    }

    @Test func badValuesAreNamed() {
        let found = errors("""
            pipelines:
              c:
                stages:
                  - type: count.ebpf
                    interfaces: [eth0, "a/b"]
                    key: peer
                    ipv4_prefix: 33
                    max_entries: 10
                    attach: xdp
            """)
        for key in ["interfaces[1]", "key", "ipv4_prefix", "max_entries", "attach"] {
            #expect(found.contains { $0.contains("count.ebpf): \(key)") }, "\(key) in \(found)")
        }
    }
}
