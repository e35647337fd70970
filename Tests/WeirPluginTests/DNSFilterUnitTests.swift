import Foundation
import NIOCore
import Testing
import WeirCore
import WeirStages

@testable import WeirDNS

/// dns.filter's pure parts: the wire format, the list formats and the matcher, the cache.
struct DNSFilterUnitTests {
    static func rules(_ lists: [(String, String, Bool)]) -> DomainRules {
        DomainRules(lists: lists.map { (name: $0.0, text: Array($0.1.utf8), allowList: $0.2) })
    }

    @Test("each list format; a blocked name blocks its subdomains; wildcards only subdomains; allow wins; comments and adblock options are not rules")
    func listFormats() {
        let rules = Self.rules([
            ("hosts", "# comment\n127.0.0.1 localhost\n0.0.0.0 ads.example.com   tracker.example.net # trailing\n::1 ip6-localhost\n", false),
            ("plain", "Bad.Example.ORG.\n\nnot a domain line\n", false),
            ("adblock", "! title\n[Adblock Plus 2.0]\n||doubleclick.example^\n||cdn.example^$third-party\n@@||good.doubleclick.example^\n||x.example/path^\n", false),
            ("wild", "*.popups.example\n", false),
            ("allow", "ads.example.com\n", true),
        ])
        #expect(rules.count == 7)
        #expect(rules.counts == ["hosts": 2, "plain": 1, "adblock": 2, "wild": 1, "allow": 1])
        #expect(rules.skipped == ["plain": 1, "adblock": 2])
        #expect(rules.decide("tracker.example.net") == .init(allowed: false, list: "hosts", line: 3))
        #expect(rules.decide("deep.sub.tracker.example.net")?.allowed == false, "subdomains of a blocked name")
        #expect(rules.decide("example.net") == nil, "not its parent")
        #expect(rules.decide("bad.example.org") == .init(allowed: false, list: "plain", line: 1), "case and the final dot do not matter")
        #expect(rules.decide("doubleclick.example")?.allowed == false)
        #expect(rules.decide("good.doubleclick.example") == .init(allowed: true, list: "adblock", line: 5), "@@ wins over the parent's block")
        #expect(rules.decide("cdn.example") == nil, "a rule with options is not a DNS rule")
        #expect(rules.decide("popups.example") == nil, "a wildcard is only the subdomains")
        #expect(rules.decide("a.popups.example")?.allowed == false)
        #expect(rules.decide("ads.example.com") == .init(allowed: true, list: "allow", line: 1), "the allowlist wins")
        #expect(rules.decide("localhost") == nil)
        #expect(DomainRules().decide("anything.example") == nil)
    }

    @Test("named lists (a lists: section, as the coordinator pushes them) are rules: strings in any format, {domain:}; addresses skipped; an unknown list is named")
    func namedLists() throws {
        let loader = ConfigLoader(registry: BuiltinStages.registry)
        let pipelines = try loader.loadPipelines(yaml: """
            lists:
              corp-block:
                entries: [ads.example.com, "||tracker.example^", { domain: bad.example.org }, 9.9.9.9, { address: 1.1.1.1 }]
              corp-allow:
                entries: [good.ads.example.com]
            pipelines:
              dns:
                stages:
                  - type: dns.filter
                    listen: 127.0.0.1:5300
                    blocklists: [{list: corp-block}]
                    allowlists: [{list: corp-allow}]
                    upstreams: [192.0.2.53]
            """, name: "t.yaml")
        let config = try #require(pipelines.first?.stages.first?.config as? DNSFilterConfig)
        #expect(config.rules.rules.decide("x.ads.example.com") == .init(allowed: false, list: "list:corp-block", line: 1))
        #expect(config.rules.rules.decide("tracker.example")?.allowed == false)
        #expect(config.rules.rules.decide("bad.example.org") == .init(allowed: false, list: "list:corp-block", line: 3))
        #expect(config.rules.rules.decide("good.ads.example.com") == .init(allowed: true, list: "list:corp-allow", line: 1))
        #expect(config.rules.rules.decide("9.9.9.9") == nil)
        do {
            _ = try loader.loadPipelines(yaml: """
                pipelines:
                  dns:
                    stages:
                      - {type: dns.filter, listen: "127.0.0.1:5300", upstreams: [192.0.2.53], blocklists: [{list: nope}]}
                """, name: "u.yaml")
            Issue.record("an unknown list must be refused")
        } catch {
            #expect("\(error)".contains("unknown list \"nope\""), "\(error)")
        }
    }

    @Test("records_lists: a dns_records list's lines and {name, addresses|alias} entries become records; inline records win; lists of other kinds are refused both ways")
    func recordsLists() throws {
        let loader = ConfigLoader(registry: BuiltinStages.registry)
        func load(_ entries: String, kind: String = "dns_records", stage: String = "records_lists: [office]") throws -> DNSFilterConfig? {
            let pipelines = try loader.loadPipelines(yaml: """
                lists:
                  office:
                    kind: \(kind)
                    entries: \(entries)
                pipelines:
                  dns:
                    stages:
                      - type: dns.filter
                        listen: 127.0.0.1:5300
                        upstreams: [192.0.2.53]
                        records: {fixed.internal: [10.0.0.1]}
                        \(stage)
                """, name: "t.yaml")
            return pipelines.first?.stages.first?.config as? DNSFilterConfig
        }
        let config = try #require(try load(#"["10.0.0.5 app.internal api.internal", "10.0.0.7 app.internal", {name: "*.dev.internal", addresses: [fd00::6]}, {name: wiki.internal, alias: app.internal}, "10.0.0.9 fixed.internal"]"#))
        #expect(config.records.lookup("app.internal") == .addresses(["10.0.0.5", "10.0.0.7"].map { try! IPNetwork.parse($0) }))
        #expect(config.records.lookup("x.dev.internal") == .addresses([try IPNetwork.parse("fd00::6")]))
        #expect(config.records.lookup("wiki.internal") == .alias("app.internal"))
        #expect(config.records.lookup("fixed.internal") == .addresses([try IPNetwork.parse("10.0.0.1")]), "inline wins")
        let changed = try #require(try load(#"["10.0.0.6 app.internal"]"#))
        #expect(changed.contentFingerprint != config.contentFingerprint, "a changed list is a changed stage")

        func refusal(_ entries: String, kind: String = "dns_records", stage: String = "records_lists: [office]") -> String {
            do {
                _ = try load(entries, kind: kind, stage: stage)
                return ""
            } catch { return "\(error)" }
        }
        #expect(refusal(#"["10.0.0.5 app.internal", "app.internal"]"#).contains("t.yaml:4:40: lists.office.entries[1]: expected an IP address and one or more names"))
        #expect(refusal(#"[{name: a.internal, addresses: [10.0.0.1], alias: b.internal}]"#).contains("give exactly one of addresses and alias"))
        #expect(refusal(#"[{name: "bad name", addresses: [10.0.0.1]}]"#).contains("a domain name (or *.domain)"))
        #expect(refusal(#"[{name: a.internal, addresses: [10.0.0.0/24]}]"#).contains("a list of IP addresses"))
        #expect(refusal("[9.9.9.9]", kind: "destinations").contains("list \"office\" is a destinations list; this takes dns_records"))
        #expect(refusal("[x]", kind: "dns_addresses").contains("one of destinations, dns_rules, dns_records"))
        // A records list is not an allowlist for enforce.nftables, nor a rule list for dns.filter.
        #expect(refusal(#"["10.0.0.5 app.internal"]"#, stage: "blocklists: [{list: office}]").contains("is a dns_records list; this takes destinations or dns_rules"))
        let enforce = try? loader.loadPipelines(yaml: """
            lists:
              office: {kind: dns_rules, entries: ["||ads.example^"]}
            pipelines:
              egress:
                stages:
                  - type: enforce.nftables
                    allow_destinations: { interfaces: [eth9], lists: [office] }
            """, name: "e.yaml")
        #expect(enforce == nil)
        let rules = try #require(try load(#"["||ads.example^", "@@||ok.ads.example^"]"#, kind: "dns_rules", stage: "blocklists: [{list: office}]"))
        #expect(rules.rules.rules.decide("x.ads.example")?.allowed == false && rules.rules.rules.decide("ok.ads.example")?.allowed == true)
    }

    @Test("records_files: hosts-format lines become records (several lines of a name add up, wildcards); inline records win; a bad line is named")
    func recordsFiles() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-records-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("records.hosts").path
        try "# table\n10.0.0.5 app.internal api.internal\n10.0.0.7 app.internal\nfd00::6 *.dev.internal\n10.0.0.9 fixed.internal\n"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let loader = ConfigLoader(registry: BuiltinStages.registry)
        func load(_ path: String) throws -> DNSFilterConfig {
            let pipelines = try loader.loadPipelines(yaml: """
                pipelines:
                  dns:
                    stages:
                      - type: dns.filter
                        listen: 127.0.0.1:5300
                        upstreams: [192.0.2.53]
                        records: {fixed.internal: [10.0.0.1]}
                        records_files: [\(path)]
                """, name: "t.yaml")
            return try #require(pipelines.first?.stages.first?.config as? DNSFilterConfig)
        }
        let config = try load(file)
        #expect(config.records.lookup("app.internal") == .addresses(["10.0.0.5", "10.0.0.7"].map { try! IPNetwork.parse($0) }))
        #expect(config.records.lookup("api.internal") == .addresses([try IPNetwork.parse("10.0.0.5")]))
        #expect(config.records.lookup("x.dev.internal") == .addresses([try IPNetwork.parse("fd00::6")]))
        #expect(config.records.lookup("fixed.internal") == .addresses([try IPNetwork.parse("10.0.0.1")]), "inline wins")
        let before = config.contentFingerprint
        try "10.0.0.8 app.internal\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try load(file).contentFingerprint != before, "a changed file is a changed stage")
        try "10.0.0.8 app.internal\nnot-an-address app.internal\n".write(toFile: file, atomically: true, encoding: .utf8)
        do {
            _ = try load(file)
            Issue.record("a bad line must be refused")
        } catch {
            #expect("\(error)".contains("\(file):2: expected an IP address"), "\(error)")
        }
    }

    @Test("a query is read (name lowercased, EDNS payload size) and answered with its question echoed")
    func wireQueryAndAnswers() throws {
        var bytes = DNSWire.query(id: 0x1234, name: "WWW.Example.com", type: DNSWire.RecordType.a)
        bytes[11] = 1  // one additional: OPT with a 1232-byte payload
        bytes += [0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]
        let query = try DNSWire.parseQuery(bytes)
        #expect(query.id == 0x1234 && query.question == .init(name: "www.example.com", type: 1, qclass: 1) && query.udpPayloadSize == 1232)
        #expect(query.recursionDesired)

        let zero = DNSWire.answer(to: query, code: 0, records: [(DNSWire.RecordType.a, 60, [0, 0, 0, 0])])
        let parsed = try DNSWire.parseResponse(zero)
        #expect(parsed.id == 0x1234 && parsed.responseCode == 0 && parsed.question == query.question)
        #expect(parsed.addresses.map(\.bytes) == [[0, 0, 0, 0]] && parsed.minimumTTL == 60)
        // The name keeps the client's case in the echoed question.
        #expect(zero.count > 20 && String(decoding: zero[13..<16], as: UTF8.self) == "WWW")
        let nx = try DNSWire.parseResponse(DNSWire.answer(to: query, code: DNSWire.ResponseCode.nameError))
        #expect(nx.responseCode == 3 && nx.addresses.isEmpty && nx.minimumTTL == nil)

        // Lowering TTLs in place; the id replaced.
        let served = DNSWire.served(zero, id: 7, ttlOffsets: parsed.ttlOffsets, age: 45)
        let again = try DNSWire.parseResponse(served)
        #expect(again.id == 7 && again.addresses.first?.ttl == 15)
        #expect(try DNSWire.parseResponse(DNSWire.served(zero, id: 7, ttlOffsets: parsed.ttlOffsets, age: 100)).addresses.first?.ttl == 0)
    }

    @Test("hostile messages are refused without crashing: pointer loops, forward pointers, truncation, long names, responses as queries")
    func wireRefusesGarbage() {
        let header: [UInt8] = [0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        let cases: [[UInt8]] = [
            [],
            [0, 1],
            header,
            header + [0xC0, 12, 0, 1, 0, 1],  // a pointer to itself
            header + [0xC0, 40, 0, 1, 0, 1],  // forward
            header + [3, 0x61, 0x62],  // truncated label
            header + Array(repeating: [63] + [UInt8](repeating: 0x61, count: 63), count: 5).flatMap { $0 } + [0, 0, 1, 0, 1],  // > 255 bytes
            [0, 1, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1],  // a response
            [0, 1, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 1],  // two questions
        ]
        for bytes in cases { #expect(throws: DNSWire.Malformed.self) { try DNSWire.parseQuery(bytes) } }
        for _ in 0..<2000 {
            let random = (0..<Int.random(in: 0...80)).map { _ in UInt8.random(in: 0...255) }
            _ = try? DNSWire.parseQuery(random)
            _ = try? DNSWire.parseResponse(random)
        }
        #expect(DNSWire.formatError(header)?.count == 12)
        #expect(DNSWire.formatError([1, 2, 3]) == nil)
    }

    @Test("the cache serves aged answers under the client's id, expires them, never stores SERVFAIL, and stays within its size")
    func cache() throws {
        let cache = DNSCache(capacity: 3, minTTL: 10, maxTTL: 100)
        let query = try DNSWire.parseQuery(DNSWire.query(id: 1, name: "a.example", type: 1))
        let answer = DNSWire.answer(to: query, code: 0, records: [(1, 300, [192, 0, 2, 1])])
        let t0 = ContinuousClock.now
        cache.store(query.question, bytes: answer, response: try DNSWire.parseResponse(answer), now: t0)
        let served = try #require(cache.lookup(query.question, id: 99, now: t0 + .seconds(30))?.bytes)
        #expect(try DNSWire.parseResponse(served).id == 99)
        #expect(try DNSWire.parseResponse(served).addresses.first?.ttl == 70, "max_ttl 100 less 30 s of age")
        #expect(try DNSWire.parseResponse(cache.clamped(answer, response: try DNSWire.parseResponse(answer))).addresses.first?.ttl == 100)
        let short = DNSWire.answer(to: query, code: 0, records: [(1, 2, [192, 0, 2, 1])])
        #expect(try DNSWire.parseResponse(cache.clamped(short, response: try DNSWire.parseResponse(short))).addresses.first?.ttl == 10, "min_ttl")
        // Written into a datagram's send buffer: the same bytes; nothing when the buffer is too small.
        let hit = try #require(cache.lookup(query.question, id: 99, now: t0 + .seconds(30)))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 512, alignment: 8)
        defer { buffer.deallocate() }
        let written = try #require(hit.write(into: buffer))
        #expect(Array(buffer[0..<written]) == served)
        #expect(hit.write(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(served.count - 1)])) == nil)
        #expect(cache.lookup(query.question, id: 1, now: t0 + .seconds(101))?.bytes == nil, "max_ttl clamps the 300 s record to 100 s")
        let failed = DNSWire.answer(to: query, code: DNSWire.ResponseCode.serverFailure)
        cache.store(query.question, bytes: failed, response: try DNSWire.parseResponse(failed), now: t0)
        #expect(cache.lookup(query.question, id: 1, now: t0)?.bytes == nil)
        for index in 0..<10 {
            let other = try DNSWire.parseQuery(DNSWire.query(id: 1, name: "n\(index).example", type: 1))
            let reply = DNSWire.answer(to: other, code: 0, records: [(1, 50, [192, 0, 2, 2])])
            cache.store(other.question, bytes: reply, response: try DNSWire.parseResponse(reply), now: t0)
        }
        #expect(cache.count == 3)
    }

    @Test("serve_stale keeps expired answers for the window only, with TTL 30; prefetch asks once for a name hit twice in its last tenth")
    func staleAndPrefetch() throws {
        let cache = DNSCache(capacity: 10, minTTL: 0, maxTTL: 1000, staleWindow: .seconds(60), prefetch: true)
        let query = try DNSWire.parseQuery(DNSWire.query(id: 1, name: "a.example", type: 1))
        let answer = DNSWire.answer(to: query, code: 0, records: [(1, 100, [192, 0, 2, 1])])
        let t0 = ContinuousClock.now
        cache.store(query.question, bytes: answer, response: try DNSWire.parseResponse(answer), now: t0)
        #expect(cache.stale(query.question, id: 5, now: t0 + .seconds(50)) != nil, "a fresh entry is also acceptable when upstreams fail")
        // Hits early in the TTL do not prefetch; the second hit in the last 10 s does, once.
        #expect(cache.lookup(query.question, id: 1, now: t0 + .seconds(10))?.prefetch == false)
        #expect(cache.lookup(query.question, id: 1, now: t0 + .seconds(91))?.prefetch == true)
        #expect(cache.lookup(query.question, id: 1, now: t0 + .seconds(92))?.prefetch == false, "one refresh at a time")
        cache.prefetchFailed(query.question)
        #expect(cache.lookup(query.question, id: 1, now: t0 + .seconds(93))?.prefetch == true, "again after a failed refresh")
        // Expired: not an answer, but stale within the window, every TTL 30.
        #expect(cache.lookup(query.question, id: 1, now: t0 + .seconds(101)) == nil)
        let stale = try #require(cache.stale(query.question, id: 7, now: t0 + .seconds(150)))
        #expect(try DNSWire.parseResponse(stale).id == 7)
        #expect(try DNSWire.parseResponse(stale).addresses.first?.ttl == 30)
        #expect(cache.stale(query.question, id: 7, now: t0 + .seconds(161)) == nil, "past the window")
        _ = cache.lookup(query.question, id: 1, now: t0 + .seconds(161))
        #expect(cache.count == 0, "dropped once past the window")

        let plain = DNSCache(capacity: 10, minTTL: 0, maxTTL: 1000)
        plain.store(query.question, bytes: answer, response: try DNSWire.parseResponse(answer), now: t0)
        #expect(plain.lookup(query.question, id: 1, now: t0 + .seconds(95))?.prefetch == false)
        #expect(plain.lookup(query.question, id: 1, now: t0 + .seconds(96))?.prefetch == false, "prefetch is off")
        #expect(plain.stale(query.question, id: 1, now: t0 + .seconds(101)) == nil, "serve_stale is off")
    }

    @Test("configuration: upstream forms, names refused, lists that cannot be read named at their place")
    func configuration() throws {
        #expect(try DNSFilterConfig.Upstream.parse("9.9.9.9").description == "9.9.9.9:53")
        #expect(try DNSFilterConfig.Upstream.parse("tcp://[2620:fe::fe]:53").transport == .tcp)
        #expect(try DNSFilterConfig.Upstream.parse("2620:fe::fe").port == 53)
        #expect(throws: (any Error).self) { try DNSFilterConfig.Upstream.parse("dns.quad9.net:53") }
        #expect(throws: (any Error).self) { try DNSFilterConfig.Upstream.parse("https://dns.quad9.net/dns-query") }
        let loader = ConfigLoader(registry: BuiltinStages.registry)
        do {
            _ = try loader.loadPipelines(
                yaml: "pipelines:\n  dns:\n    stages:\n      - type: dns.filter\n        upstreams: [9.9.9.9]\n        blocklists: [/nonexistent/list.txt]\n",
                name: "t.yaml")
            Issue.record("expected an error")
        } catch {
            #expect(error.diagnostics.map(\.description).contains { $0.hasPrefix("t.yaml:6:") && $0.contains("cannot read /nonexistent/list.txt") }, "\(error)")
        }
    }

    @Test("groups by WireGuard peer name: names the pipeline's wireguard stage has are accepted, others refused at validation")
    func groupsByPeerName() throws {
        let loader = ConfigLoader(registry: BuiltinStages.registry)
        func load(_ source: String) throws {
            _ = try loader.loadPipelines(yaml: """
                pipelines:
                  vpn:
                    stages:
                      - type: wireguard
                        interface: wg0
                        pool: [10.8.0.0/24]
                        peers: [{name: alice}]
                      - type: dns.filter
                        listen: 10.8.0.1:53
                        upstreams: [9.9.9.9]
                        groups: [{name: kids, sources: [\(source)]}]
                """, name: "t.yaml")
        }
        try load("alice")
        try load("10.8.0.0/25")
        #expect(throws: (any Error).self) { try load("mallory") }
        #expect(throws: (any Error).self) { try load("not a name!") }
    }
}
