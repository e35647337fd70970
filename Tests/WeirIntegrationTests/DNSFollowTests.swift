import Foundation
import Testing

/// dns.filter coupled with enforce.nftables on a gateway: clients' DNS hijacked to the filter by pipeline
/// name, and an egress allowlist that follows what each client was answered (`domains_from`).
@Suite(
    "dns.filter and enforce.nftables together in network namespaces", .serialized,
    .enabled(if: kernelTestsUnavailable == nil && which("nft") != nil, Comment(rawValue: kernelTestsUnavailable ?? "needs nft installed")))
struct DNSFollowTests {
    /// The VPN-style gateway: dns.filter on every address (port 5300), clients' port-53 traffic to any
    /// server redirected to it, DoH endpoints blocked, and leaving through the outside interface only to
    /// addresses of answers for the followed domains.
    static func gateway(_ net: GatewayTopology, blocklist: String, grace: String = "2s", maxElements: Int = 64, ipv6: Bool = false) -> String {
        """
        pipelines:
          dns:
            stages:
              - type: dns.filter
                listen: \(ipv6 ? "\"[::]:5300\"" : "0.0.0.0:5300")
                blocklists: [\(blocklist)]
                upstreams: [11.0.0.53:53]
                cache: {size: 0}
          gateway:
            stages:
              - type: enforce.nftables
                dns_hijack:
                  sources: [10.50.0.0/24\(ipv6 ? ", fd50::/64" : "")]
                  resolver: dns
                allow_destinations:
                  interfaces: [\(net.gatewayOutside)]
                  entries:
                    - 11.0.0.9
                    - domains_from: dns
                      domains: [svc.example.net, doh.example.net]
                  follow_grace: \(grace)
                  max_elements: \(maxElements)
                masquerade:
                  - { source: 10.50.0.0/24, out_interface: \(net.gatewayOutside) }
        """
    }

    /// The addresses a client is answered for `name`, asking "some other resolver" (hijacked).
    static func resolve(_ net: GatewayTopology, _ name: String) throws -> String {
        try net.inside(net.client, [python3, "-c", GatewayTopology.Scripts.dnsQuery, "11.0.0.99", "53", name])
    }

    /// What every test here runs: the topology, an echo server on the upstream's port 7000, the test's
    /// authoritative server (port 53 of 11.0.0.53, answering what `answer` wrote, with `ttl`), a blocklist
    /// with blocked.example.net, and the agent on the gateway with `gateway(...)`.
    final class Fixture {
        let net: GatewayTopology
        let agent: WeirProcess
        private let folder: URL
        private var helpers: [Process] = []

        init(firstAnswer: String, ttl: Int, grace: String = "2s", maxElements: Int = 64, extraClientAddress: String? = nil, ipv6: Bool = false) throws {
            net = try GatewayTopology()
            if let extraClientAddress { try net.inside(net.client, ["ip", "addr", "add", extraClientAddress, "dev", net.clientInterface]) }
            folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-follow-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            let blocklist = folder.appendingPathComponent("block.txt").path
            try "blocked.example.net\n".write(toFile: blocklist, atomically: true, encoding: .utf8)
            helpers.append(try net.background(net.upstream, GatewayTopology.Scripts.echoServer, ["7000"]))
            agent = try WeirProcess(
                pipelines: DNSFollowTests.gateway(net, blocklist: blocklist, grace: grace, maxElements: maxElements, ipv6: ipv6), netns: net.gateway)
            try answer(firstAnswer)
            helpers.append(try net.background(net.upstream, GatewayTopology.Scripts.dnsServer, [answersPath, "11.0.0.53", "53", "\(ttl)"]))
            try agent.start()
        }

        private var answersPath: String { folder.appendingPathComponent("answers").path }

        /// What the authoritative server answers from now on.
        func answer(_ address: String) throws {
            try "\(address)\n".write(toFile: answersPath, atomically: true, encoding: .utf8)
        }

        /// A helper process in the upstream namespace, stopped with the fixture.
        func upstreamHelper(_ script: String, _ arguments: [String]) throws {
            helpers.append(try net.background(net.upstream, script, arguments))
        }

        /// The addresses a client is answered for `name`.
        func resolve(_ name: String) throws -> String { try DNSFollowTests.resolve(net, name) }

        deinit {
            agent.stop()
            helpers.forEach { $0.stopHelper() }
            try? FileManager.default.removeItem(at: folder)
        }
    }

    @Test("Hijacked DNS is filtered; clients reach only the addresses they were answered, until TTL + grace, and longer while a connection lives")
    func allowlistFollowsAnswers() throws {
        let fixture = try Fixture(firstAnswer: "11.0.0.2", ttl: 1)
        defer { withExtendedLifetime(fixture) {} }  // the agent runs until the test ends
        try fixture.upstreamHelper(GatewayTopology.Scripts.acceptAll, ["443"])
        let (net, agent) = (fixture.net, fixture.agent)

        // Nothing resolved yet.
        #expect(!net.clientReaches("11.0.0.2", port: 7000))

        // A name outside the entry's domains is answered but opens nothing; a blocked name is NXDOMAIN.
        #expect(try fixture.resolve("other.example.net").contains("11.0.0.2"))
        #expect(!net.clientReaches("11.0.0.2", port: 7000), "other.example.net is not a followed domain")
        #expect(try fixture.resolve("blocked.example.net").contains("[]"), "the filter answers, not the server asked")

        // The client's own resolution opens exactly what it was given.
        let first = try fixture.resolve("svc.example.net")
        #expect(first.contains("11.0.0.99") && first.contains("11.0.0.2"), "answered as if by the server asked: \(first)")
        #expect(net.clientReaches("11.0.0.2", port: 7000))
        #expect(!net.clientReaches("11.0.0.3", port: 7000), "never an address it was not given")

        // The authoritative server moves the name: the new address opens, the old one closes after TTL + grace.
        try fixture.answer("11.0.0.3")
        #expect(try fixture.resolve("svc.example.net").contains("11.0.0.3"))
        #expect(net.clientReaches("11.0.0.3", port: 7000))
        #expect(eventually(timeout: 10) { !net.clientReaches("11.0.0.2", port: 7000) }, "11.0.0.2 expired (TTL 1 s + grace 2 s)")

        // A connection outlives its answer: held 6 s (TTL + grace is 3 s) while conntrack keeps the pair.
        #expect(try fixture.resolve("svc.example.net").contains("11.0.0.3"))
        let held = try net.inside(net.client, [python3, "-c", GatewayTopology.Scripts.holdConnection, "11.0.0.3", "7000", "6"])
        #expect(held.contains("held"), "\(held)")
        #expect(try (agent.metric("weir_nft_follow_pairs_total", ["pipeline": "gateway", "event": "kept"]) ?? 0) >= 1)
        #expect(eventually(timeout: 10) { !net.clientReaches("11.0.0.3", port: 7000) }, "expired once the connection closed")

        // A DoH endpoint stays blocked on 443 even when a followed name points at it.
        try net.inside(net.gateway, ["ip", "route", "add", "1.1.1.1/32", "via", "11.0.0.2"])
        try fixture.answer("1.1.1.1")
        #expect(try fixture.resolve("doh.example.net").contains("1.1.1.1"))
        #expect(net.clientReaches("1.1.1.1", port: 7000), "followed")
        #expect(!net.clientReaches("1.1.1.1", port: 443), "DNS-over-HTTPS endpoints are blocked")

        #expect(try (agent.metric("weir_nft_follow_answers_total", ["pipeline": "gateway", "result": "admitted"]) ?? 0) >= 3)
        #expect(try (agent.metric("weir_dns_queries_total", ["pipeline": "dns", "result": "blocked"]) ?? 0) >= 1)

        // The egress dashboard's panel for followed addresses (the others are checked in NftablesTests).
        try PrometheusServer.expectDashboardsAnswer(
            ["weir-egress"], scraping: agent, netns: net.gateway, only: ["Addresses followed from DNS answers"])
    }

    @Test("IPv6: a client's AAAA answer, asked over IPv6 of some other resolver, opens exactly that IPv6 address for it, until TTL + grace")
    func followsIPv6() throws {
        let fixture = try Fixture(firstAnswer: "2a01:4f8::2", ttl: 1, ipv6: true)
        defer { withExtendedLifetime(fixture) {} }
        try fixture.upstreamHelper(GatewayTopology.Scripts.acceptAll, ["7001"])
        let net = fixture.net
        func resolve(_ name: String) throws -> String {
            try net.inside(net.client, [python3, "-c", GatewayTopology.Scripts.dnsQuery, "2a01:4f8::99", "53", name, "AAAA"])
        }
        #expect(!net.clientReaches("2a01:4f8::2", port: 7001), "nothing resolved yet")
        let first = try resolve("svc.example.net")
        #expect(first.contains("2a01:4f8::99") && first.contains("2a01:4f8::2"), "hijacked and answered as if by the server asked: \(first)")
        #expect(net.ruleset().contains("fd50::2 . 2a01:4f8::2"), "\(net.ruleset())")
        // Also the gateway's neighbour advertisements to the upstream's global address must leave, or the
        // upstream never finds where to send its SYN-ACK.
        #expect(net.clientReaches("2a01:4f8::2", port: 7001), "\(net.ruleset())")
        #expect(!net.clientReaches("2a01:4f8::3", port: 7001), "never an address it was not given")

        try fixture.answer("2a01:4f8::3")
        #expect(try resolve("svc.example.net").contains("2a01:4f8::3"))
        #expect(net.clientReaches("2a01:4f8::3", port: 7001))
        #expect(eventually(timeout: 10) { !net.clientReaches("2a01:4f8::2", port: 7001) }, "2a01:4f8::2 expired (TTL 1 s + grace 2 s)")
        // The IPv4 side of the same dual-stack server still follows.
        try fixture.answer("11.0.0.2")
        #expect(try fixture.resolve("svc.example.net").contains("11.0.0.2"))
        #expect(net.clientReaches("11.0.0.2", port: 7000))
    }

    @Test("Private answers open nothing (DNS rebinding); a full set evicts pairs without connections and refuses when every pair has one")
    func boundsAndRebinding() throws {
        let fixture = try Fixture(firstAnswer: "10.60.0.2", ttl: 60, grace: "60s", maxElements: 2)
        defer { withExtendedLifetime(fixture) {} }  // the agent runs until the test ends
        let (net, agent) = (fixture.net, fixture.agent)

        #expect(try fixture.resolve("svc.example.net").contains("10.60.0.2"))
        #expect(!net.clientReaches("10.60.0.2", port: 7000), "a public name answered with a private address opens nothing")

        // Two pairs fill the set; a third answer evicts the one closest to expiry that has no connection.
        for address in ["11.0.0.2", "11.0.0.3", "11.0.0.53"] {
            try fixture.answer("\(address)")
            #expect(try fixture.resolve("svc.example.net").contains(address))
        }
        #expect(net.clientReaches("11.0.0.53", port: 7000))
        #expect(!net.clientReaches("11.0.0.2", port: 7000), "evicted: oldest without a connection")
        #expect(try (agent.metric("weir_nft_follow_pairs_total", ["pipeline": "gateway", "event": "evicted"]) ?? 0) >= 1)

        // Both pairs in use: the next answer is refused with SERVFAIL instead of an address that would not work.
        let holders = try ["11.0.0.3", "11.0.0.53"].map { address in
            try net.background(net.client, GatewayTopology.Scripts.holdConnection, [address, "7000", "8"])
        }
        defer { holders.forEach { $0.stopHelper() } }
        Thread.sleep(forTimeInterval: 1)  // both connections open
        try fixture.answer("11.0.0.2")
        let refused = try fixture.resolve("svc.example.net")
        #expect(refused.contains("[]") && !refused.contains("11.0.0.2"), "\(refused)")
        #expect(try (agent.metric("weir_nft_follow_answers_total", ["pipeline": "gateway", "result": "refused"]) ?? 0) >= 1)
        #expect(try (agent.metric("weir_dns_queries_total", ["pipeline": "dns", "result": "servfail"]) ?? 0) >= 1)
        #expect(!net.clientReaches("11.0.0.2", port: 7000))
    }

    @Test("Each client reaches what it resolved itself, not what another client resolved")
    func pairsArePerClient() throws {
        let fixture = try Fixture(firstAnswer: "11.0.0.2", ttl: 60, grace: "60s", extraClientAddress: "10.50.0.3/24")
        defer { withExtendedLifetime(fixture) {} }  // the agent runs until the test ends
        let net = fixture.net

        /// Python: argv source host port name — resolve `name` asking 11.0.0.99 from `source`, then connect to
        /// the answer's first address from `source`; prints the address and "open" or the error.
        let resolveAndConnect = """
            import socket, struct, sys
            source, name = sys.argv[1], sys.argv[2]
            q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\x00\\x00\\x01\\x00\\x01"
            if name != "-":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((source, 0))
                s.settimeout(2)
                s.sendto(q, ("11.0.0.99", 53))
                s.recvfrom(512)
            try:
                c = socket.create_connection(("11.0.0.2", 7000), timeout=2, source_address=(source, 0))
                c.close()
                print("open")
            except Exception as error:
                print(error)
            """
        func attempt(from source: String, resolving name: String) throws -> Bool {
            try net.inside(net.client, [python3, "-c", resolveAndConnect, source, name]).contains("open")
        }
        #expect(try attempt(from: "10.50.0.2", resolving: "svc.example.net"), "client .2 resolved 11.0.0.2 itself")
        #expect(try !attempt(from: "10.50.0.3", resolving: "-"), "client .3 did not resolve it: its own pair is missing")
        #expect(try attempt(from: "10.50.0.3", resolving: "svc.example.net"), "after its own resolution it may")
        #expect(net.ruleset().contains("10.50.0.2 . 11.0.0.2") && net.ruleset().contains("10.50.0.3 . 11.0.0.2"), "\(net.ruleset())")
    }

    @Test("References to other pipelines are checked: a missing pipeline, one without dns.filter, an unknown group")
    func referencesAreValidated() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-refs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("weir.yaml").path
        try """
            pipelines:
              web:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:9000
                  - type: connect.tcp
                    addresses: [127.0.0.1:9001]
              dns:
                stages:
                  - type: dns.filter
                    listen: 127.0.0.1:5300
                    upstreams: [127.0.0.1:53]
              gateway:
                stages:
                  - type: enforce.nftables
                    dns_hijack: {sources: [10.0.0.0/8], resolver: web}
                    allow_destinations:
                      interfaces: [eth0]
                      entries:
                        - domains_from: nowhere
              gateway2:
                stages:
                  - type: enforce.nftables
                    allow_destinations:
                      interfaces: [eth1]
                      entries:
                        - { domains_from: dns, groups: [staff] }
            """.write(toFile: file, atomically: true, encoding: .utf8)
        let (status, output) = try runWeir(["validate", "--config", file])
        #expect(status == 78)
        #expect(output.contains("pipelines.gateway.stages[0] (enforce.nftables): dns_hijack.resolver: pipeline \"web\" has no dns.filter stage"), "\(output)")
        #expect(output.contains("allow_destinations.entries.domains_from: there is no pipeline \"nowhere\""), "\(output)")
        #expect(output.contains("groups staff are not groups of its dns.filter"), "\(output)")
        #expect(output.contains("weir.yaml:"), "errors name the file: \(output)")
    }
}
