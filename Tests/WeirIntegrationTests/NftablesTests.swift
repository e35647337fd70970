import Foundation
import Testing

/// enforce.nftables and route.gateway against the real kernel, in a client–gateway–upstream set of
/// namespaces; the agent runs on the gateway (or, for routes, on the client).
@Suite(
    "enforce.nftables and route.gateway in network namespaces", .serialized,
    .enabled(if: kernelTestsUnavailable == nil && which("nft") != nil, Comment(rawValue: kernelTestsUnavailable ?? "needs nft installed")))
struct NftablesTests {
    static func allowlist(_ net: GatewayTopology, entries: [String], extra: String = "") -> String {
        """
        pipelines:
          egress:
            stages:
              - type: enforce.nftables
                allow_destinations:
                  interfaces: [\(net.gatewayOutside)]
                  entries:
        \(entries.map { "            - \($0)" }.joined(separator: "\n"))
        \(extra)
        """
    }

    @Test("Only allowlisted destinations are forwarded, IPv4 and IPv6; the rest is dropped and counted; reloads apply deltas")
    func allowlistForwardsOnlyListedDestinations() throws {
        let net = try GatewayTopology()
        let server = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["7000"])
        defer { server.stopHelper() }
        let config = Self.allowlist(net, entries: ["11.0.0.2", "2a01:4f8::2"], extra: "          count_elements: true")
        let agent = try WeirProcess(pipelines: config, netns: net.gateway)
        try agent.start()
        defer { agent.stop() }

        #expect(net.clientReaches("11.0.0.2", port: 7000))
        #expect(!net.clientReaches("11.0.0.3", port: 7000))
        #expect(net.clientReaches("2a01:4f8::2", port: 7000))
        #expect(!net.clientReaches("2a01:4f8::3", port: 7000))
        let exposition = try agent.metrics()
        #expect((value(in: exposition, "weir_nft_dropped_packets_total", ["pipeline": "egress"]) ?? 0) >= 2)
        #expect((value(in: exposition, "weir_nft_allowed_packets_total", ["pipeline": "egress", "destination": "11.0.0.2"]) ?? 0) > 0)
        #expect(value(in: exposition, "weir_nft_set_elements", ["pipeline": "egress", "set": "dst4"]) == 1)
        #expect(value(in: exposition, "weir_nft_set_max_elements", ["pipeline": "egress", "set": "dst4"]) == 65536)
        let (status, report) = try promtoolCheck(exposition)
        #expect(status == 0, "promtool: \(report)")
        // The egress dashboard answers from a real Prometheus beside the agent (followed addresses: DNSFollowTests).
        try PrometheusServer.expectDashboardsAnswer(
            ["weir-egress"], scraping: agent, netns: net.gateway, except: ["Addresses followed from DNS answers"], trafficFor: 4
        ) {
            _ = net.clientReaches("11.0.0.2", port: 7000)
            _ = net.clientReaches("11.0.0.3", port: 7000)
        }

        // The same configuration again changes nothing, counters included.
        let before = net.ruleset()
        try agent.writePipelines(config + "\n")
        try agent.reload()
        #expect(net.ruleset() == before)

        // Adding an entry adds one element; the others keep their counters.
        let counted = try #require(try agent.metric("weir_nft_allowed_bytes_total", ["pipeline": "egress", "destination": "11.0.0.2"]))
        try agent.writePipelines(Self.allowlist(net, entries: ["11.0.0.2", "11.0.0.3", "2a01:4f8::2"], extra: "          count_elements: true"))
        try agent.reload()
        #expect(try agent.metric("weir_nft_allowed_bytes_total", ["pipeline": "egress", "destination": "11.0.0.2"]) == counted)
        #expect(net.clientReaches("11.0.0.3", port: 7000))

        // Removing the only enforce.nftables stage removes Weir's table.
        try agent.writePipelines("pipelines:\n\(tcpForwardEntry("other", port: freePort(), to: [freePort()]))")
        try agent.reload()
        #expect(net.ruleset().isEmpty)
        #expect(net.clientReaches("11.0.0.3", port: 7000) && net.clientReaches("2a01:4f8::3", port: 7000))
    }

    @Test("A domain entry follows its DNS answer; a change the kernel refuses leaves the ruleset as it was")
    func domainEntriesFollowDNS() throws {
        let net = try GatewayTopology()
        let server = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["7000"])
        defer { server.stopHelper() }
        let answers = FileManager.default.temporaryDirectory.appendingPathComponent("weir-dns-\(UUID().uuidString)").path
        try "11.0.0.2\n".write(toFile: answers, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: answers) }
        let dns = try net.background(net.upstream, GatewayTopology.Scripts.dnsServer, [answers, "11.0.0.53", "53"])
        defer { dns.stopHelper() }
        let agent = try WeirProcess(
            pipelines: Self.allowlist(net, entries: ["svc.example.net"], extra: """
                          resolvers: [11.0.0.53]
                          resolve_interval: 2s
                          min_ttl: 1s
                          max_elements: 2
                """), netns: net.gateway)
        try agent.start()
        defer { agent.stop() }

        #expect(net.clientReaches("11.0.0.2", port: 7000))
        #expect(!net.clientReaches("11.0.0.3", port: 7000))

        try "11.0.0.3\n".write(toFile: answers, atomically: true, encoding: .utf8)
        #expect(eventually { net.ruleset().contains("11.0.0.3") && !net.ruleset().contains("11.0.0.2") }, "the set follows the answer")
        #expect(net.clientReaches("11.0.0.3", port: 7000))
        #expect(!net.clientReaches("11.0.0.2", port: 7000))
        #expect((try agent.metric("weir_nft_domain_resolutions_total", ["pipeline": "egress", "result": "success"]) ?? 0) >= 2)

        // Three addresses do not fit in max_elements 2: the kernel refuses the batch and nothing changes.
        let before = net.ruleset()
        try "11.0.0.2\n11.0.0.3\n11.0.0.4\n".write(toFile: answers, atomically: true, encoding: .utf8)
        #expect(try eventually { (try agent.metric("weir_nft_domain_resolutions_total", ["pipeline": "egress", "result": "apply_failed"]) ?? 0) >= 1 })
        #expect(net.ruleset() == before)
        #expect(agent.log.contains("applying resolved addresses failed"))
    }

    @Test("Non-public entries need allow_private; a protected entry survives a reload that omits it until its flag is cleared")
    func privateAndProtectedEntries() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-private-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("weir.yaml").path
        try """
            pipelines:
              egress:
                stages:
                  - type: enforce.nftables
                    allow_destinations:
                      interfaces: [eth0]
                      entries: [10.1.2.3, { address: 10.9.0.0/16, allow_private: true }]
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let (status, output) = try runWeir(["validate", "--config", file])
        #expect(status == 78)
        #expect(output.contains("entries[0]: 10.1.2.3 is not a public address; add allow_private: true to allow it"), "\(output)")
        #expect(!output.contains("entries[1]"))

        let net = try GatewayTopology()
        let server = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["7000"])
        defer { server.stopHelper() }
        let agent = try WeirProcess(pipelines: Self.allowlist(net, entries: ["11.0.0.2", "{ address: 11.0.0.3, protected: true }"]), netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        #expect(net.clientReaches("11.0.0.3", port: 7000))

        try agent.writePipelines(Self.allowlist(net, entries: ["11.0.0.2"]))
        try agent.reload()
        #expect(net.clientReaches("11.0.0.3", port: 7000), "protected: kept")
        #expect(agent.log.contains("protected allowlist entry kept"))

        // Nor can removing the whole stage drop it: that reload fails and says why.
        try agent.writePipelines("pipelines:\n\(tcpForwardEntry("other", port: freePort(), to: [freePort()]))")
        try agent.reload()
        #expect(try agent.metric("weir_config_reloads_total", ["result": "failure"]) == 1)
        #expect(agent.log.contains("the allowlist has protected entries (11.0.0.3)"))
        #expect(net.clientReaches("11.0.0.3", port: 7000))

        // Clearing the flag first, then omitting the entry, removes it.
        try agent.writePipelines(Self.allowlist(net, entries: ["11.0.0.2", "{ address: 11.0.0.3, protected: false }"]))
        try agent.reload()
        try agent.writePipelines(Self.allowlist(net, entries: ["11.0.0.2"]))
        try agent.reload()
        #expect(!net.clientReaches("11.0.0.3", port: 7000))
    }

    @Test("kill -9 then start leaves exactly the configured ruleset; a failed reload leaves it byte-identical")
    func reconcileAfterCrashAndFailedReload() throws {
        let net = try GatewayTopology()
        let config = Self.allowlist(net, entries: ["11.0.0.2", "11.0.0.0/30", "2a01:4f8::/64"])
        var agent = try WeirProcess(pipelines: config, netns: net.gateway)
        try agent.start()
        let configured = net.ruleset()
        #expect(configured.contains("11.0.0.0/30") && configured.contains("2a01:4f8::/64"))
        agent.signal(SIGKILL)
        _ = agent.waitForExit(timeout: 5)

        // Leftovers of a crashed run and objects of a pipeline that is gone.
        try net.inside(net.gateway, ["nft", "add", "chain", "inet", "weir", "egress.stale"])
        try net.inside(net.gateway, ["nft", "add", "set", "inet", "weir", "gone.dst4", "{ type ipv4_addr; }"])
        try net.inside(net.gateway, ["nft", "add", "element", "inet", "weir", "egress.dst4", "{ 11.0.0.9 }"])
        agent = try WeirProcess(pipelines: config, netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        #expect(net.ruleset() == configured)

        // A reload whose other pipeline cannot start rolls back: the ruleset does not change.
        let holder = try net.background(net.gateway, GatewayTopology.Scripts.acceptAll, ["7100"])
        defer { holder.stopHelper() }
        usleep(300_000)
        try agent.writePipelines(Self.allowlist(net, entries: ["11.0.0.2", "11.0.0.3"]) + "\n" + tcpForwardEntry("busy", port: 7100, to: [freePort()]))
        try agent.reload()
        #expect(try agent.metric("weir_config_reloads_total", ["result": "failure"]) == 1)
        #expect(net.ruleset() == configured)
    }

    @Test("A start removes what the configuration dropped while the agent was stopped, networks included: the ruleset equals a clean start's")
    func startConvergesAfterEntriesWereDropped() throws {
        let net = try GatewayTopology()
        let server = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["7000"])
        defer { server.stopHelper() }
        let kept = "{address: 10.77.2.0/24, allow_private: true}"
        let counted = "          count_elements: true"
        let agent = try WeirProcess(pipelines: Self.allowlist(net, entries: ["11.0.0.0/30", "2a01:4f8::/64", "1.1.1.1", kept], extra: counted), netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        #expect(net.clientReaches("11.0.0.2", port: 7000) && net.clientReaches("2a01:4f8::2", port: 7000))
        // Networks are counted per element too (their listing needs the elements a terse one leaves out).
        #expect((try agent.metric("weir_nft_allowed_packets_total", ["pipeline": "egress", "destination": "11.0.0.0/30"]) ?? 0) > 0)
        #expect((try agent.metric("weir_nft_allowed_packets_total", ["pipeline": "egress", "destination": "2a01:4f8::/64"]) ?? 0) > 0)
        agent.stop()

        try agent.writePipelines(Self.allowlist(net, entries: [kept], extra: counted))
        try agent.start()
        let restarted = net.ruleset()
        #expect(!restarted.contains("11.0.0.0/30") && !restarted.contains("2a01:4f8::/64") && !restarted.contains("1.1.1.1"), "\(restarted)")
        #expect(restarted.contains("10.77.2.0/24"))
        #expect(!net.clientReaches("11.0.0.2", port: 7000) && !net.clientReaches("2a01:4f8::2", port: 7000), "the dropped ranges are closed")

        agent.stop()
        try net.inside(net.gateway, ["nft", "delete", "table", "inet", "weir"])
        try agent.start()
        #expect(net.ruleset() == restarted, "a clean start of the same configuration")
    }

    @Test("protected: true holds across restarts as across reloads: a stage removed while stopped stays in force (logged, /healthz 503) until released; unprotected leftovers and interrupted writes go")
    func protectedEntriesAcrossRestarts() throws {
        let net = try GatewayTopology()
        let server = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["7000"])
        defer { server.stopHelper() }
        let protected = Self.allowlist(net, entries: ["11.0.0.2", "{ address: 11.0.0.3, protected: true }"])
        let agent = try WeirProcess(pipelines: protected, netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        #expect(net.clientReaches("11.0.0.3", port: 7000) && !net.clientReaches("11.0.0.53", port: 7000))
        let ruleset = net.ruleset()
        agent.signal(SIGKILL)
        _ = agent.waitForExit(timeout: 5)
        // What a crash during a state write leaves (ours, and Foundation's atomic-write name).
        let stateDirectory = agent.directory.appendingPathComponent("nftables").path
        for leftover in ["egress.json.tmp", "egress.json.tmp.Ab12Cd"] {
            FileManager.default.createFile(atPath: "\(stateDirectory)/\(leftover)", contents: Data("{".utf8))
        }

        // Stopped, the stage removed, started: like the refused reload, the allowlist stays in force.
        let other = "pipelines:\n\(tcpForwardEntry("other", port: freePort(), to: [freePort()]))"
        try agent.writePipelines(other)
        try agent.start()
        #expect(net.ruleset() == ruleset, "the protected pipeline's objects are kept")
        #expect(net.clientReaches("11.0.0.3", port: 7000) && !net.clientReaches("11.0.0.53", port: 7000))
        #expect(agent.log.contains("enforce.nftables of pipeline \"egress\" was removed while the agent was stopped, but it holds protected entries (11.0.0.3)"))
        let (health, report) = try agent.health()
        #expect(health == 503 && report.contains("protected entries (11.0.0.3)"), "\(report)")
        let files = try FileManager.default.contentsOfDirectory(atPath: stateDirectory).sorted()
        #expect(files == ["egress.json"], "\(files)")

        // Released the documented way: back with protected: false, reloaded, then removed.
        try agent.writePipelines(Self.allowlist(net, entries: ["11.0.0.2", "{ address: 11.0.0.3, protected: false }"]))
        try agent.reload()
        #expect(try agent.health().0 == 200)
        try agent.writePipelines(other)
        try agent.reload()
        #expect(try agent.metric("weir_config_reloads_total", ["result": "failure"]) ?? 0 == 0)
        #expect(!net.ruleset().contains("egress"), "\(net.ruleset())")
        #expect(try FileManager.default.contentsOfDirectory(atPath: stateDirectory).isEmpty, "no state file of a removed stage")
        #expect(net.clientReaches("11.0.0.53", port: 7000), "nothing is filtered any more")

        // An unprotected stage removed while stopped leaves nothing: no objects, no state file.
        try agent.writePipelines(Self.allowlist(net, entries: ["11.0.0.2"]))
        try agent.reload()
        #expect(FileManager.default.fileExists(atPath: "\(stateDirectory)/egress.json"))
        agent.stop()
        try agent.writePipelines(other)
        try agent.start()
        #expect(!net.ruleset().contains("egress") && !FileManager.default.fileExists(atPath: "\(stateDirectory)/egress.json"))
        #expect(try agent.health().0 == 200)
    }

    @Test("Access profiles, masquerade, DNS hijack, the DoH blocklist and marks, with real traffic")
    func profilesNatAndDNSHijack() throws {
        // The upstream has no route back to the clients: only masquerade makes replies find their way.
        let net = try GatewayTopology(upstreamRoutesBack: false)
        // The upstream server writes the address of every peer to a file.
        let peers = FileManager.default.temporaryDirectory.appendingPathComponent("weir-peers-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: peers.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: peers) }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: which("ip")!)
        server.arguments = ["netns", "exec", net.upstream, python3, "-c", GatewayTopology.Scripts.acceptAll, "7000"]
        server.standardOutput = try FileHandle(forWritingTo: peers)
        server.standardError = FileHandle.nullDevice
        try server.run()
        let tls = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["443"])
        let answers = FileManager.default.temporaryDirectory.appendingPathComponent("weir-dns-\(UUID().uuidString)").path
        try "11.0.0.7\n".write(toFile: answers, atomically: true, encoding: .utf8)
        let dns = try net.background(net.upstream, GatewayTopology.Scripts.dnsServer, [answers, "11.0.0.53", "53"])
        defer {
            server.stopHelper()
            tls.stopHelper()
            dns.stopHelper()
            try? FileManager.default.removeItem(atPath: answers)
        }
        // The test's own table counts packets leaving the gateway with mark 16.
        try net.inside(net.gateway, ["nft", "add", "table", "ip", "marktest"])
        try net.inside(net.gateway, ["nft", "add", "chain", "ip", "marktest", "post", "{ type filter hook postrouting priority 300; }"])
        try net.inside(net.gateway, ["nft", "add", "rule", "ip", "marktest", "post", "meta", "mark", "16", "counter"])

        func pipelines(profile: String) -> String {
            """
            pipelines:
              vpn:
                stages:
                  - type: enforce.nftables
                    profiles:
                      - { source: 10.50.0.2, profile: \(profile) }
                    masquerade:
                      - { source: 10.50.0.0/24, out_interface: \(net.gatewayOutside) }
                    dns_hijack:
                      sources: [10.50.0.0/24]
                      resolver: 11.0.0.53
                    marks:
                      - { source: 10.50.0.0/24, protocol: tcp, ports: [7000], mark: 16 }
            """
        }
        let agent = try WeirProcess(pipelines: pipelines(profile: "internet_only"), netns: net.gateway)
        try agent.start()
        defer { agent.stop() }

        #expect(net.clientReaches("11.0.0.2", port: 7000), "masqueraded out")
        #expect(!net.clientReaches("10.60.0.2", port: 7000), "internet_only: private destinations dropped")
        #expect(!net.clientReaches("1.1.1.1", port: 443), "a known DoH endpoint is blocked")
        #expect(net.clientReaches("11.0.0.2", port: 443))
        let answer = try net.inside(net.client, [python3, "-c", GatewayTopology.Scripts.dnsQuery, "11.0.0.99", "53", "anything.example.net"])
        #expect(answer.contains("11.0.0.7"), "DNS to any server is answered by the hijack resolver: \(answer)")
        let marked = try net.inside(net.gateway, ["nft", "list", "chain", "ip", "marktest", "post"])
        #expect(!marked.contains("packets 0 "), "marked packets left the gateway: \(marked)")

        try agent.writePipelines(pipelines(profile: "full"))
        try agent.reload()
        #expect(net.clientReaches("10.60.0.2", port: 7000), "full: private destinations allowed")
        let seen = (try? String(contentsOf: peers, encoding: .utf8)) ?? ""
        #expect(seen.contains("11.0.0.1") && !seen.contains("10.50.0.2"), "the upstream saw the gateway's address: \(seen)")
    }

    @Test("allow_sources lets only the listed clients reach a forward pipeline's listener")
    func sourceAllowlist() throws {
        let net = try GatewayTopology()
        let server = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["7000"])
        defer { server.stopHelper() }
        func pipelines(_ sources: String) -> String {
            """
            pipelines:
              admin:
                stages:
                  - type: listen.tcp
                    address: 10.50.0.1:7200
                  - type: enforce.nftables
                    allow_sources: [\(sources)]
                  - type: connect.tcp
                    addresses: [11.0.0.2:7000]
            """
        }
        let agent = try WeirProcess(pipelines: pipelines("10.99.0.0/24, fd99::/64"), netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        #expect(!net.clientReaches("10.50.0.1", port: 7200), "the client is not listed")
        #expect((try agent.metric("weir_nft_dropped_packets_total", ["pipeline": "admin"]) ?? 0) >= 1)

        try agent.writePipelines(pipelines("10.50.0.0/24"))
        try agent.reload()
        #expect(net.clientReaches("10.50.0.1", port: 7200))
        #expect(try agent.metric("weir_pipeline_connections_total", ["pipeline": "admin"]) ?? 0 >= 1)
    }

    @Test("route.gateway sends public ranges via the gateway, keeps private ones local, and removes its routes")
    func gatewayRoutes() throws {
        let net = try GatewayTopology()
        let server = try net.background(net.upstream, GatewayTopology.Scripts.acceptAll, ["7000"])
        defer { server.stopHelper() }
        try net.inside(net.client, ["ip", "route", "del", "default"])
        try net.inside(net.client, ["ip", "-6", "route", "del", "default"])
        #expect(!net.clientReaches("11.0.0.2", port: 7000), "no route yet")

        let agent = try WeirProcess(pipelines: """
            pipelines:
              egress-route:
                stages:
                  - type: route.gateway
                    via: 10.50.0.1
                    via6: fd50::1
            """, netns: net.client)
        try agent.start()
        defer { agent.stop() }
        let routes = try net.inside(net.client, ["ip", "route", "show", "proto", "87"])
        #expect(routes.contains("11.0.0.0/8 via 10.50.0.1"), "\(routes)")
        #expect(!routes.contains("10.0.0.0/8") && !routes.contains("192.168.") && !routes.contains("127."))
        #expect(try net.inside(net.client, ["ip", "-6", "route", "show", "proto", "87"]).contains("via fd50::1"))
        #expect(net.clientReaches("11.0.0.2", port: 7000))
        #expect(net.clientReaches("2a01:4f8::2", port: 7000))
        #expect(!net.clientReaches("10.60.0.2", port: 7000), "private ranges are not sent to the gateway")

        try agent.writePipelines("pipelines:\n\(tcpForwardEntry("other", port: freePort(), to: [freePort()]))")
        try agent.reload()
        #expect(try net.inside(net.client, ["ip", "route", "show", "proto", "87"]).isEmpty)
        #expect(try net.inside(net.client, ["ip", "-6", "route", "show", "proto", "87"]).isEmpty)
    }

    @Test("A route.gateway stage moved to another table while the agent was down (or killed) leaves no routes in the old one")
    func gatewayRoutesFollowTheirTable() throws {
        let net = try GatewayTopology()
        func routes(_ table: Int) throws -> Int {
            try net.inside(net.client, ["ip", "route", "show", "table", "\(table)", "proto", "87"]).split(separator: "\n").count
        }
        func stage(_ table: Int) -> String {
            "pipelines:\n  egress-route:\n    stages:\n      - type: route.gateway\n        via: 10.50.0.1\n        table: \(table)\n"
        }
        let agent = try WeirProcess(pipelines: stage(100), netns: net.client)
        try agent.start()
        defer { agent.stop() }
        #expect(try routes(100) > 10)
        agent.kill9()
        try agent.writePipelines(stage(200))
        try agent.start()
        #expect(try routes(200) > 10)
        #expect(try routes(100) == 0, "the old table's routes are gone")
    }
}
