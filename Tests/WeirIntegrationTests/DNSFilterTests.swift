import Foundation
import NIOConcurrencyHelpers
import Testing

/// dns.filter as a real agent on loopback, asked with dig, with dnsmasq as its upstream.
@Suite("dns.filter with dig and dnsmasq", .serialized, .enabled(if: dnsTestsUnavailable == nil, Comment(rawValue: dnsTestsUnavailable ?? "")))
struct DNSFilterTests {
    static let records = [
        "www.example.test": "192.0.2.10", "padded.example.test": "192.0.2.11", "tracker.example.net": "192.0.2.20", "sub.tracker.example.net": "192.0.2.21",
        "doubleclick.example": "192.0.2.30", "good.doubleclick.example": "192.0.2.31", "popups.example": "192.0.2.40",
        "a.popups.example": "192.0.2.41", "kept.example.net": "192.0.2.50", "use-application-dns.net": "192.0.2.60",
    ]

    struct Server {
        let agent: WeirProcess
        let port: Int
        let lists: URL

        /// A dns.filter on 127.0.0.1 with the test's lists and `options` (YAML lines of the stage); `extra` goes
        /// into weir.yaml (a coordinator section).
        init(_ options: String, extra: String = "", id: String = "test-agent") throws {
            port = freeDualPort()
            lists = FileManager.default.temporaryDirectory.appendingPathComponent("weir-dns-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: lists, withIntermediateDirectories: true)
            try "0.0.0.0 tracker.example.net\n".write(to: lists.appendingPathComponent("hosts"), atomically: true, encoding: .utf8)
            try "||doubleclick.example^\n@@||good.doubleclick.example^\n*.popups.example\n".write(
                to: lists.appendingPathComponent("adblock.txt"), atomically: true, encoding: .utf8)
            try "kept.example.net\n".write(to: lists.appendingPathComponent("allow.txt"), atomically: true, encoding: .utf8)
            agent = try WeirProcess(pipelines: Self.pipelines(port: port, lists: lists, options), extra: extra, id: id)
            try agent.start()
        }

        static func pipelines(port: Int, lists: URL, _ options: String) -> String {
            """
            pipelines:
              dns:
                stages:
                  - type: dns.filter
                    listen: 127.0.0.1:\(port)
                    blocklists: [\(lists.path)/hosts, \(lists.path)/adblock.txt]
                    allowlists: [\(lists.path)/allow.txt]
            \(options.split(separator: "\n").map { "        " + $0 }.joined(separator: "\n"))
            """
        }

        func ask(_ name: String, _ type: String = "A", _ extra: [String] = []) throws -> String {
            try dig(["@127.0.0.1", "-p", "\(port)", name, type] + extra)
        }

        func stop() {
            agent.stop()
            try? FileManager.default.removeItem(at: lists)
        }
    }

    @Test("blocked names and their subdomains get NXDOMAIN from each list format; allow rules win; wildcards take only subdomains; canaries; cached; TCP and truncation")
    func rulesFormatsCanariesCache() throws {
        let upstream = try Dnsmasq(records: Self.records, txt: ["big.example.test": (0..<8).map { "\($0)" + String(repeating: "x", count: 120) }])
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]")
        defer { server.stop() }

        let allowed = try server.ask("www.example.test")
        #expect(digStatus(allowed) == "NOERROR" && allowed.contains("192.0.2.10"), "\(allowed)")
        // A query of 512 bytes (EDNS padding) is read whole, though datagrams are read 32 at a time.
        let padded = try server.ask("padded.example.test", "A", ["+padding=512"])
        #expect(digStatus(padded) == "NOERROR" && padded.contains("192.0.2.11"), "\(padded)")
        for name in ["tracker.example.net", "sub.tracker.example.net", "doubleclick.example", "a.popups.example", "use-application-dns.net"] {
            let answer = try server.ask(name)
            #expect(digStatus(answer) == "NXDOMAIN", "\(name): \(answer)")
        }
        for (name, address) in [("good.doubleclick.example", "192.0.2.31"), ("popups.example", "192.0.2.40")] {
            let answer = try server.ask(name)
            #expect(digStatus(answer) == "NOERROR" && answer.contains(address), "\(name): \(answer)")
        }
        // Asked again: from the cache.
        #expect(try server.ask("www.example.test", "A", ["+short"]).contains("192.0.2.10"))
        #expect(try server.agent.metric("weir_dns_queries_total", ["pipeline": "dns", "result": "cached"]) ?? 0 >= 1)
        #expect(try server.agent.metric("weir_dns_queries_total", ["pipeline": "dns", "result": "blocked"]) == 5)
        #expect(try server.agent.metric("weir_dns_rules", ["list": "\(server.lists.path)/adblock.txt"]) == 3)
        // TCP; and an answer too large for a client without EDNS comes truncated over UDP, whole over TCP —
        // asked from the upstream (the first query) and from the cache (the others), which write it differently.
        #expect(try server.ask("www.example.test", "A", ["+tcp", "+short"]).contains("192.0.2.10"))
        for _ in 0..<2 {
            let truncated = try server.ask("big.example.test", "TXT", ["+noedns", "+ignore"])
            #expect(truncated.contains("flags: qr tc") || truncated.contains(" tc "), "\(truncated)")
            let whole = try server.ask("big.example.test", "TXT", ["+tcp"])
            #expect(whole.components(separatedBy: "xxxxxxxx").count > 8, "\(whole)")
        }
        let wholeOverUDP = try server.ask("big.example.test", "TXT", ["+bufsize=4096", "+ignore"])
        #expect(!wholeOverUDP.contains("flags: qr tc") && wholeOverUDP.components(separatedBy: "xxxxxxxx").count > 8, "\(wholeOverUDP)")
    }

    @Test(
        "The DNS dashboard: every query returns data from a real Prometheus scraping a dns.filter that answers, blocks, caches and fails over from a dead upstream",
        .enabled(if: PrometheusServer.available, "needs Debian's prometheus package"))
    func dashboardQueries() throws {
        let upstream = try Dnsmasq(records: Self.records)
        // The first upstream answers nothing (a closed port): errors counted, answers from the second.
        let server = try Server("upstreams: [127.0.0.1:\(freePort()), 127.0.0.1:\(upstream.port)]\nupstream_timeout: 200ms")
        defer { server.stop() }
        try PrometheusServer.expectDashboardsAnswer(["weir-dns"], scraping: server.agent, netns: nil, trafficFor: 6) {
            for name in ["www.example.test", "tracker.example.net", "kept.example.net", "padded.example.test"] { _ = try server.ask(name) }
        }
    }

    @Test("block_answer zero answers 0.0.0.0 and ::; a changed list file applies at the next SIGHUP without a YAML change")
    func zeroAnswersAndListReload() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]\nblock_answer: zero\ncache: {size: 0}")
        defer { server.stop() }
        #expect(try server.ask("tracker.example.net", "A", ["+short"]).trimmingCharacters(in: .whitespacesAndNewlines) == "0.0.0.0")
        #expect(try server.ask("tracker.example.net", "AAAA", ["+short"]).trimmingCharacters(in: .whitespacesAndNewlines) == "::")
        #expect(try server.ask("www.example.test", "A", ["+short"]).contains("192.0.2.10"))
        try "0.0.0.0 tracker.example.net\n0.0.0.0 www.example.test\n".write(to: server.lists.appendingPathComponent("hosts"), atomically: true, encoding: .utf8)
        try server.agent.reload()
        #expect(try server.ask("www.example.test", "A", ["+short"]).trimmingCharacters(in: .whitespacesAndNewlines) == "0.0.0.0")
    }

    @Test("a list reload under a steady stream of queries answers every one (the new rules take over the same sockets)")
    func reloadUnderLoad() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]")
        defer { server.stop() }
        let client = try UDPSocket(timeout: 2)
        let sent = NIOLockedValueBox(0)
        let answered = NIOLockedValueBox(Set<UInt16>())
        let receiver = Thread {
            while let (bytes, _) = client.receive() {
                if bytes.count >= 12 { _ = answered.withLockedValue { $0.insert(UInt16(bytes[0]) << 8 | UInt16(bytes[1])) } }
            }
        }
        receiver.start()
        // 2,000 queries a second for 3 s (blocked names: no upstream involved), the list changed and reloaded in the middle.
        let sender = Thread {
            for round in 0..<300 {
                for index in 0..<20 {
                    let id = UInt16(round * 20 + index)
                    try? client.send(Self.query(id: id, name: "tracker.example.net"), to: server.port)
                    sent.withLockedValue { $0 += 1 }
                }
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
        sender.start()
        Thread.sleep(forTimeInterval: 1)
        try "0.0.0.0 tracker.example.net\n0.0.0.0 www.example.test\n".write(to: server.lists.appendingPathComponent("hosts"), atomically: true, encoding: .utf8)
        try server.agent.reload()
        #expect(eventually(timeout: 10) { sent.withLockedValue { $0 } == 6000 && answered.withLockedValue { $0.count } == 6000 },
            "\(answered.withLockedValue { $0.count }) of \(sent.withLockedValue { $0 }) answered")
        #expect(digStatus(try server.ask("www.example.test")) == "NXDOMAIN", "the new list answers")
        #expect(server.agent.log.contains("on the same sockets"))
    }

    @Test("query log ring: the coordinator shows an agent's newest answers (rule, upstream, client), filtered; bounded by ring; kept across a reload; operators and admins only; weir ctl")
    func queryLogRing() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let section = try coordinator.agentSection(token: try coordinator.enrollmentToken(), labels: [:], agent: "dns-agent")
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]\nquery_log: {ring: 50}", extra: section, id: "dns-agent")
        defer { server.stop() }
        #expect(eventually(timeout: 10) { (try? coordinator.agent("dns-agent"))??["online"] as? Bool == true })

        _ = try server.ask("www.example.test")
        _ = try server.ask("tracker.example.net", "AAAA")
        _ = try server.ask("www.example.test")
        func entries(_ query: String = "", token: String? = nil) throws -> (Int, [[String: Any]], String) {
            let (status, body) = try coordinator.request("GET", "/api/v1/agents/dns-agent/dns/queries\(query)", token: token ?? coordinator.adminToken)
            let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
            return (status, object?["entries"] as? [[String: Any]] ?? [], body)
        }
        let (status, all, body) = try entries()
        #expect(status == 200 && all.count == 3, "\(body)")
        if all.count == 3 {
            #expect(all[0]["name"] as? String == "www.example.test" && all[0]["result"] as? String == "cached", "newest first: \(body)")
            #expect(all[1]["name"] as? String == "tracker.example.net" && all[1]["type"] as? String == "AAAA" && all[1]["result"] as? String == "blocked")
            #expect(all[1]["rule"] as? String == "\(server.lists.path)/hosts:1", "\(body)")
            #expect(all[2]["result"] as? String == "allowed" && all[2]["upstream"] as? String == "127.0.0.1:\(upstream.port)", "\(body)")
            #expect(all.allSatisfy { $0["client"] as? String == "127.0.0.1" && $0["pipeline"] as? String == "dns" && ($0["ms"] as? Double ?? -1) >= 0 })
        }
        #expect(try entries("?result=blocked").1.map { $0["name"] as? String } == ["tracker.example.net"])
        #expect(try entries("?search=TRACKER").1.count == 1)
        #expect(try entries("?search=127.0.0&limit=2").1.count == 2)
        #expect(try entries("?pipeline=dns").1.count == 3)
        let unknown = try entries("?pipeline=nope")
        #expect(unknown.0 == 404 && unknown.2.contains("no dns.filter stage keeping a query log ring"), "\(unknown.2)")
        #expect(try entries("?limit=0").0 == 400)
        #expect(try entries("?result=maybe").0 == 400)

        // Who asked for what is personal data: viewers are refused, operators read it.
        func token(_ role: String, name: String? = nil) throws -> String {
            try #require((coordinator.admin("POST", "/api/v1/tokens", json: ["name": name ?? role, "role": role]) as? [String: Any])?["token"] as? String)
        }
        let viewer = try entries(token: try token("viewer"))
        #expect(viewer.0 == 403 && viewer.1.isEmpty && !viewer.2.contains("tracker"), "\(viewer.2)")
        #expect(try entries(token: try token("operator")).1.count == 3)

        // Bounded: 120 more answers leave the newest 50.
        let client = try UDPSocket(timeout: 2)
        for id in 0..<120 {
            try client.send(Self.query(id: UInt16(id), name: "q\(id).tracker.example.net"), to: server.port)
            _ = client.receive()
        }
        let bounded = try entries("?limit=10000").1
        #expect(bounded.count == 50 && bounded.first?["name"] as? String == "q119.tracker.example.net" && bounded.last?["name"] as? String == "q70.tracker.example.net")

        // A reload (a changed list: a new stage takes over) keeps what the ring holds.
        try "0.0.0.0 tracker.example.net\n0.0.0.0 www.example.test\n".write(to: server.lists.appendingPathComponent("hosts"), atomically: true, encoding: .utf8)
        try server.agent.reload()
        _ = try server.ask("www.example.test")
        let reloaded = try entries("?limit=10000").1
        #expect(reloaded.count == 50 && reloaded.first?["result"] as? String == "blocked" && reloaded.first?["name"] as? String == "www.example.test")
        #expect(reloaded.dropFirst().first?["name"] as? String == "q119.tracker.example.net")

        // weir ctl, with an operator's token.
        let tokenFile = coordinator.directory.appendingPathComponent("operator.token").path
        try (try token("operator", name: "ctl")).write(toFile: tokenFile, atomically: true, encoding: .utf8)
        let shown = try runWeir(["ctl", "dns", "queries", "dns-agent", "--url", coordinator.url, "--ca", pki.caPath, "--token-file", tokenFile,
                                 "--search", "q119", "--result", "blocked"])
        #expect(shown.status == 0 && shown.output.contains("q119.tracker.example.net") && !shown.output.contains("q118"), "\(shown.output)")

        // An agent that is not connected cannot be asked.
        server.agent.stop()
        #expect(eventually(timeout: 10) { (try? entries().0) == 503 })
    }

    @Test("records from the coordinator: a dns_records list reaches the agent's dns.filter and a change answers anew; bad entries 422 at their line; a used list keeps its kind (409)")
    func recordsFromCoordinatorList() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let agent = try CoordinatorTests.managedAgent("dns-records", coordinator: coordinator, token: try coordinator.enrollmentToken(), labels: [:])
        defer { agent.stop() }
        let port = freeDualPort()
        let tokenFile = coordinator.directory.appendingPathComponent("state/admin.token").path
        let set = try runWeir(["ctl", "lists", "--url", coordinator.url, "--ca", pki.caPath, "--token-file", tokenFile, "set", "office",
                               "10.0.0.5 app.internal", "10.0.0.6 *.dev.internal", "--kind", "dns_records"])
        #expect(set.status == 0 && set.output.contains("dns_records"), "\(set.output)")
        try coordinator.admin("POST", "/api/v1/lists/office/entries", json: ["add": [["name": "wiki.internal", "alias": "app.internal"]]])
        try coordinator.admin("PUT", "/api/v1/pipelines/dns", yaml: """
            pipelines:
              dns:
                stages:
                  - type: dns.filter
                    listen: 127.0.0.1:\(port)
                    upstreams: [127.0.0.1:\(upstream.port)]
                    records_lists: [office]
            """)
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "dns", "agent": "dns-records"])
        func short(_ name: String) -> [String] {
            ((try? dig(["@127.0.0.1", "-p", "\(port)", name, "A", "+short"])) ?? "").split(separator: "\n").map(String.init)
        }
        #expect(eventually(timeout: 10) { short("app.internal") == ["10.0.0.5"] })
        #expect(short("x.dev.internal") == ["10.0.0.6"])
        #expect(short("wiki.internal") == ["app.internal.", "10.0.0.5"])
        #expect(short("www.example.test") == ["192.0.2.10"], "other names from the upstream")

        try coordinator.admin("PUT", "/api/v1/lists/office", json: ["entries": ["10.0.0.8 app.internal"]])
        #expect(eventually(timeout: 10) { short("app.internal") == ["10.0.0.8"] }, "the changed list is applied")

        let (bad, badBody) = try coordinator.request(
            "PUT", "/api/v1/lists/office", body: #"{"entries":["10.0.0.8 app.internal","app.internal"]}"#, token: coordinator.adminToken)
        #expect(bad == 422 && badBody.contains("lists.office.entries[1]: expected an IP address and one or more names"), "\(badBody)")
        let (kind, kindBody) = try coordinator.request(
            "PUT", "/api/v1/lists/office", body: #"{"kind":"destinations","entries":["9.9.9.9"]}"#, token: coordinator.adminToken)
        #expect(kind == 409 && kindBody.contains("cannot become destinations: it is used by pipeline document \\\"dns\\\""), "\(kindBody)")
        let (enforce, enforceBody) = try coordinator.request("PUT", "/api/v1/pipelines/egress", body: """
            pipelines:
              egress:
                stages:
                  - type: enforce.nftables
                    allow_destinations: { interfaces: [eth9], lists: [office] }
            """, contentType: "application/yaml", token: coordinator.adminToken)
        #expect(enforce == 422 && enforceBody.contains("is a dns_records list; this takes destinations"), "\(enforceBody)")
        #expect(short("app.internal") == ["10.0.0.8"], "refused changes changed nothing")
    }

    /// A DNS query for an A record, as bytes.
    static func query(id: UInt16, name: String) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") { bytes += [UInt8(label.utf8.count)] + Array(label.utf8) }
        return bytes + [0, 0, 1, 0, 1]
    }

    @Test("records: addresses, wildcards, rewrites to a local name and to an upstream name (CNAME and the target's addresses), before any upstream")
    func localRecords() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let server = try Server("""
            upstreams: [127.0.0.1:\(upstream.port)]
            records:
              app.internal: [10.0.0.5, fd00::5]
              "*.dev.internal": [10.0.0.6]
              exact.dev.internal: [10.0.0.7]
              alias.internal: app.internal
              web.internal: www.example.test
              hop.internal: alias.internal
              www.example.test: [10.0.0.9]
            """)
        defer { server.stop() }
        func short(_ name: String, _ type: String = "A") throws -> [String] {
            try server.ask(name, type, ["+short"]).split(separator: "\n").map(String.init)
        }
        #expect(try short("app.internal") == ["10.0.0.5"])
        #expect(try short("app.internal", "AAAA") == ["fd00::5"])
        #expect(try short("x.y.dev.internal") == ["10.0.0.6"])
        #expect(try short("exact.dev.internal") == ["10.0.0.7"], "an exact name wins over the wildcard")
        #expect(try short("alias.internal") == ["app.internal.", "10.0.0.5"])
        #expect(try short("hop.internal") == ["alias.internal.", "app.internal.", "10.0.0.5"])
        // A local name shadows the upstream's answer for it; a rewrite to an upstream name asks the upstream.
        #expect(try short("www.example.test") == ["10.0.0.9"])
        let tag = try Dnsmasq(records: ["tag.example.test": "192.0.2.77"])
        let rewrite = try Server("upstreams: [127.0.0.1:\(tag.port)]\nrecords:\n  shortcut.internal: tag.example.test")
        defer { rewrite.stop() }
        #expect(try rewrite.ask("shortcut.internal", "A", ["+short"]).split(separator: "\n").map(String.init) == ["tag.example.test.", "192.0.2.77"])
        let full = try server.ask("app.internal")
        #expect(full.contains(" aa") || full.contains("aa "), "answers from records are authoritative: \(full)")
    }

    @Test("groups: a client in a group's network gets the group's lists instead of the stage's; others the stage's")
    func groupsBySource() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let lists = FileManager.default.temporaryDirectory.appendingPathComponent("weir-dns-group-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: lists, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: lists) }
        try "www.example.test\n".write(to: lists.appendingPathComponent("kids.txt"), atomically: true, encoding: .utf8)
        try "tracker.example.net\n".write(to: lists.appendingPathComponent("staff-allow.txt"), atomically: true, encoding: .utf8)
        let server = try Server("""
            upstreams: [127.0.0.1:\(upstream.port)]
            groups:
              - {name: kids, sources: [127.0.0.2/32], blocklists: [\(lists.path)/kids.txt]}
              - {name: staff, sources: [127.0.0.0/29], allowlists: [\(lists.path)/staff-allow.txt]}
            """)
        defer { server.stop() }
        func status(_ name: String, from source: String) throws -> String? { digStatus(try server.ask(name, "A", ["-b", source])) }
        // 127.0.0.1 is staff (the /29): the staff lists replace the stage's, so tracker.example.net is allowed.
        #expect(try status("tracker.example.net", from: "127.0.0.1") == "NOERROR")
        #expect(try status("www.example.test", from: "127.0.0.1") == "NOERROR")
        // 127.0.0.2 is in both; the most specific (kids, /32) wins.
        #expect(try status("www.example.test", from: "127.0.0.2") == "NXDOMAIN")
        #expect(try status("tracker.example.net", from: "127.0.0.2") == "NOERROR", "kids have no tracker rule")
        // 127.0.0.9 is in no group: the stage's lists.
        #expect(try status("tracker.example.net", from: "127.0.0.9") == "NXDOMAIN")
        #expect(try status("www.example.test", from: "127.0.0.9") == "NOERROR")
    }

    @Test("query_log: one JSON line per answer with the deciding rule (list and line) or the upstream; rotated at max_size")
    func queryLog() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-dns-log-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("queries.jsonl").path
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]\nquery_log: {file: \(log), max_size: 4KiB}")
        defer { server.stop() }
        try server.ask("sub.tracker.example.net")
        try server.ask("www.example.test")
        try server.ask("use-application-dns.net")
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n").compactMap {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        #expect(lines.count == 3)
        #expect(lines[0]["name"] as? String == "sub.tracker.example.net" && lines[0]["result"] as? String == "blocked")
        #expect(lines[0]["rule"] as? String == "\(server.lists.path)/hosts:1" && lines[0]["client"] as? String == "127.0.0.1")
        #expect(lines[1]["result"] as? String == "allowed" && lines[1]["upstream"] as? String == "127.0.0.1:\(upstream.port)" && lines[1]["type"] as? String == "A")
        #expect(lines[2]["rule"] as? String == "canary")
        for index in 0..<60 { try server.ask("n\(index).example.test") }
        let size = { (path: String) in ((try? FileManager.default.attributesOfItem(atPath: path)[.size]) as? Int) ?? 0 }
        #expect(size(log + ".1") > 0 && size(log + ".1") <= 4096 && size(log) <= 4096, "rotated, bounded: \(size(log + ".1")) + \(size(log))")
    }

    @Test("DNS over TLS upstream (unbound serving TLS with a test CA's certificate, forwarding to dnsmasq): answers with the CA; with a name the certificate lacks, or without the CA, SERVFAIL",
          .enabled(if: which("unbound") != nil, "needs unbound installed"))
    func dnsOverTLSUpstream() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let dot = try DoTServer(forwardingTo: upstream.port)
        let good = try Server("upstreams: [\"tls://127.0.0.1:\(dot.port)#dot.test\"]\nupstream_ca: \(dot.pki.caPath)")
        let answer = try good.ask("www.example.test", "A", ["+short"])
        good.stop()
        #expect(answer.contains("192.0.2.10"), "\(answer)")
        let wrongName = try Server("upstreams: [\"tls://127.0.0.1:\(dot.port)#other.test\"]\nupstream_ca: \(dot.pki.caPath)\nupstream_timeout: 1s")
        let refused = try wrongName.ask("www.example.test")
        wrongName.stop()
        #expect(digStatus(refused) == "SERVFAIL", "\(refused)")
        let untrusted = try Server("upstreams: [\"tls://127.0.0.1:\(dot.port)\"]\nupstream_timeout: 1s")
        defer { untrusted.stop() }
        #expect(digStatus(try untrusted.ask("www.example.test")) == "SERVFAIL")
    }

    @Test("every upstream down is SERVFAIL, never another resolver; parallel answers from the live upstream at once while failover waits out the dead one")
    func failSafeAndStrategies() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let hole = try DNSBlackHole()
        let down = try Server("upstreams: [127.0.0.1:\(hole.port)]\nupstream_timeout: 300ms")
        let answer = try down.ask("www.example.test")
        down.stop()
        #expect(digStatus(answer) == "SERVFAIL", "\(answer)")

        // The dead upstream first, a 3 s upstream timeout, dig waiting 2 s: only an answer that does not wait
        // for the dead one arrives.
        let parallel = try Server("upstreams: [127.0.0.1:\(hole.port), 127.0.0.1:\(upstream.port)]\nupstream_timeout: 3s\nstrategy: parallel")
        let raced = try parallel.ask("www.example.test", "A", ["+short"])
        parallel.stop()
        #expect(raced.contains("192.0.2.10"), "\(raced)")
        let failover = try Server("upstreams: [127.0.0.1:\(hole.port), 127.0.0.1:\(upstream.port)]\nupstream_timeout: 3s\nstrategy: failover")
        defer { failover.stop() }
        #expect(throws: CommandFailed.self) { try failover.ask("www.example.test", "A", ["+short"]) }
        // It does get there after the dead one's timeout.
        #expect(try dig(["@127.0.0.1", "-p", "\(failover.port)", "kept.example.net", "+short"], timeout: 5).contains("192.0.2.50"))
        #expect(try failover.agent.metric("weir_dns_upstream_errors_total", ["upstream": "127.0.0.1:\(hole.port)"]) ?? 0 >= 1)
    }

    @Test("prefetch refreshes a popular name before it expires; serve_stale answers from the expired cache when the upstream is gone, else SERVFAIL")
    func prefetchAndServeStale() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]\nupstream_timeout: 300ms\ncache: {max_ttl: 3s, serve_stale: 1h, prefetch: true}")
        defer { server.stop() }
        // Asked, hit, then hit again in the last second of its 3 s: refreshed in the background. The client is
        // told 3 s, not dnsmasq's 300: it keeps the answer no longer than the cache does.
        let first = try server.ask("www.example.test")
        #expect(first.contains("\t3\tIN\tA\t192.0.2.10"), "\(first)")
        #expect(try server.ask("www.example.test", "A", ["+short"]).contains("192.0.2.10"))
        Thread.sleep(forTimeInterval: 2.3)
        let nearExpiry = try server.ask("www.example.test")
        #expect(nearExpiry.contains("\t1\tIN\tA\t192.0.2.10") || nearExpiry.contains("\t0\tIN\tA\t192.0.2.10"), "\(nearExpiry)")
        #expect(try server.agent.waitForMetric("weir_dns_cache_prefetches_total") { ($0 ?? 0) >= 1 } ?? 0 >= 1)
        // Past the first answer's expiry, still a cache hit: the prefetched answer. One upstream answer counted.
        Thread.sleep(forTimeInterval: 1.0)
        #expect(try server.ask("www.example.test", "A", ["+short"]).contains("192.0.2.10"))
        #expect(try server.agent.metric("weir_dns_queries_total", ["result": "allowed"]) == 1)

        // The upstream goes away: expired answers are given with TTL 30; a name never asked is SERVFAIL.
        #expect(try server.ask("kept.example.net", "A", ["+short"]).contains("192.0.2.50"))
        upstream.stop()
        Thread.sleep(forTimeInterval: 3.2)
        let stale = try server.ask("kept.example.net")
        #expect(digStatus(stale) == "NOERROR" && stale.contains("30\tIN\tA\t192.0.2.50"), "\(stale)")
        #expect(digStatus(try server.ask("tracker-free.example.test")) == "SERVFAIL")
        #expect(try server.agent.metric("weir_dns_stale_answers_total") ?? 0 >= 1)
    }

    /// The cause of a rare failure of the test above (its near-expiry ask read an empty answer and the agent never
    /// saw it): test servers now get ports outside the ephemeral range (`freePort`).
    @Test("dig, as the agent's user, can be given the very port dns.filter listens on (both set SO_REUSEPORT) and then reads its own query back as an empty answer; so test servers never get ports from the ephemeral range",
          .enabled(if: kernelTestsUnavailable == nil, Comment(rawValue: kernelTestsUnavailable ?? "")))
    func digCanBeGivenTheListenersPort() throws {
        let shell = ShellCommands()
        let ns = "weir-p\(namespaceTag("p"))"
        try shell.sh(["ip", "netns", "add", ns])
        defer { removeNamespace(ns) }
        try shell.sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        let agent = try WeirProcess(pipelines: """
            pipelines:
              dns:
                stages:
                  - type: dns.filter
                    listen: 127.0.0.1:40000
                    upstreams: [127.0.0.1:9]
            """, netns: ns)
        try agent.start()
        defer { agent.stop() }
        // Now the kernel hands out one port of its own in this namespace: the one the agent listens on (set
        // after the start: the agent's health check, a TCP client, needs another).
        try shell.inside(ns, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40000"])
        let answer = try shell.inside(ns, ["dig", "+tries=1", "+timeout=2", "@127.0.0.1", "-p", "40000", "www.example.test", "A"])
        // "query response not set": the reply dig read is its own query.
        #expect(answer.contains("query response not set") && digStatus(answer) == "NOERROR" && answer.contains("ANSWER: 0"), "\(answer)")

        // The ports tests give their servers: never the kernel's, never the same twice in a row.
        let text = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)
        let bounds = text.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        let ports = (0..<2000).map { _ in freeDualPort() }
        #expect(ports.allSatisfy { $0 < bounds[0] || $0 > bounds[1] }, "ephemeral range \(bounds)")
        #expect(Set(ports).count == ports.count)
    }

    @Test("fastest_address: of several addresses, the answer is the one that accepts a TCP connection first, cached so; one address is passed on")
    func fastestAddress() throws {
        // 127.0.0.2 refuses; 127.0.0.3 (second in the answer) accepts.
        let listener = try TCPListener(port: 0, host: "127.0.0.3")
        let upstream = try Dnsmasq(records: Self.records, extra: ["--host-record=multi.example.test,127.0.0.2", "--host-record=multi.example.test,127.0.0.3"])
        #expect(try dig(["@127.0.0.1", "-p", "\(upstream.port)", "multi.example.test", "+short"]).split(separator: "\n").count == 2)
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]\nfastest_address: {port: \(listener.port), timeout: 500ms}")
        defer { server.stop() }
        for _ in 0..<2 {
            let answer = try server.ask("multi.example.test", "A", ["+short"])
            #expect(answer.split(separator: "\n").map(String.init) == ["127.0.0.3"], "\(answer)")
        }
        #expect(try server.agent.metric("weir_dns_queries_total", ["result": "cached"]) == 1, "the probed answer is cached")
        #expect(try server.ask("www.example.test", "A", ["+short"]).contains("192.0.2.10"))
    }

    @Test("garbage datagrams, half TCP frames and more TCP connections than allowed leave the server answering")
    func hostileClients() throws {
        let upstream = try Dnsmasq(records: Self.records)
        let server = try Server("upstreams: [127.0.0.1:\(upstream.port)]")
        defer { server.stop() }
        let script = """
            import os, random, resource, socket, sys
            resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
            port = int(sys.argv[1])
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(2000):  # every tenth larger than the read slice of one datagram (4 KiB)
                u.sendto(os.urandom(random.randint(0, 600) if i % 10 else random.randint(4097, 9000)), ("127.0.0.1", port))
            held = []
            for i in range(1100):
                try:
                    t = socket.create_connection(("127.0.0.1", port), timeout=2)
                    t.send(b"\\x00\\x40\\x12")  # a length and one byte of the message
                    held.append(t)
                except OSError:
                    pass
            print(len(held))
            """
        let output = try command([python3, "-c", script, "\(server.port)"]).output
        #expect(Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) != nil, "\(output)")
        #expect(try server.ask("www.example.test", "A", ["+short"]).contains("192.0.2.10"))
        #expect(try server.ask("www.example.test", "A", ["+short", "+tcp"]).contains("192.0.2.10"))
    }
}
