import Foundation
import Testing

/// The agent at production scale: thousands of open connections (descriptor numbers far above 1023) and
/// hundreds of pipelines while it reloads, applies coordinator bundles and re-resolves nftables domains.
/// Connections are held by a client process of their own to an echo server of its own.
@Suite("Agent at scale: reloads with thousands of connections and pipelines", .serialized)
struct ScaleTests {
    static let connections = 5_000

    /// A forward to the herd's echo server, plus `extra` pipelines.
    static func forward(port: Int, echo: Int, extra: String = "") -> String {
        tcpForward("herd", port: port, to: [echo]) + extra
    }

    @Test("SIGHUP and a coordinator bundle with 5,000 connections open: the agent and every connection survive")
    func reloadAndBundleWithThousandsOfConnections() throws {
        let pki = try TestPKI()
        let coordinator = try CoordinatorProcess(pki: pki)
        try coordinator.start()
        defer { coordinator.stop() }
        let token = try coordinator.enrollmentToken(labels: [:], uses: 1)
        let echoPort = freePort(), port = freePort(), socksPort = freePort()
        let echo = try ConnectionHerd.echoServer(port: echoPort)
        defer { echo.stopHelper() }
        let socks = """

              socks:
                stages:
                  - {type: listen.socks5, address: "127.0.0.1:\(socksPort)", handshake_timeout: 1s}
                  - {type: connect.tcp}
            """
        let agent = try WeirProcess(
            pipelines: Self.forward(port: port, echo: echoPort, extra: socks),
            extra: try coordinator.agentSection(token: token, labels: ["role": "scale"], agent: "scale-agent"), id: "scale-agent")
        try agent.start()
        defer { agent.stop() }
        #expect(agent.log.contains("max_descriptors"), "the agent logs its descriptor limit")

        let herd = try ConnectionHerd(count: Self.connections, port: port)
        defer { herd.close() }
        let descriptors = openDescriptors(pid: agent.pid)
        #expect(descriptors > 2 * Self.connections, "two descriptors per connection: \(descriptors)")

        // Hostile clients at this scale: half greetings that close, and ones that stall, on a SOCKS5 listener.
        for _ in 0..<50 {
            for opening in HostileClientTests.partialOpenings["socks"]! {
                let client = try TCPClient(port: socksPort)
                if !opening.isEmpty { try client.send(opening) }
                client.shutdownWrite()
            }
        }
        let stalled = try (0..<20).map { _ in try TCPClient(port: socksPort, timeout: 5) }
        #expect(eventually(timeout: 5) { HostileClientTests.closeWait(ports: [socksPort]) == 0 }, "no socket left in CLOSE-WAIT")
        for client in stalled { #expect((try? client.receive())?.isEmpty == true, "a stalled client is closed at handshake_timeout") }
        let exposition = try agent.metrics()
        #expect(value(in: exposition, "weir_pipeline_errors_total", ["pipeline": "socks", "reason": "closed_during_handshake"]) ?? 0 >= 150)
        #expect(value(in: exposition, "weir_pipeline_errors_total", ["pipeline": "socks", "reason": "closed_without_data"]) ?? 0 == 50)
        #expect(value(in: exposition, "weir_pipeline_errors_total", ["pipeline": "socks", "reason": "handshake_timeout"]) == 20)

        // A reload that changes something (a pipeline added) and one that changes nothing.
        let addedPort = freePort()
        try agent.writePipelines(tcpForward("added", port: addedPort, to: [echoPort]), file: "added.yaml")
        try agent.reload()
        try agent.reload()
        #expect(agent.waitForExit(timeout: 0.5) == nil, "the agent is alive after the reloads:\n\(agent.log.suffix(2000))")
        #expect((try agent.metric("weir_config_reloads_total", ["result": "failure"]) ?? 0) == 0)
        #expect(try echoMismatch(port: addedPort, size: 1024, seed: 1, timeout: 5) == nil)

        // A bundle from the coordinator goes through the same apply path.
        let bundlePort = freePort()
        try coordinator.admin("PUT", "/api/v1/pipelines/from-coordinator", yaml: tcpForward("from-coordinator", port: bundlePort, to: [echoPort]))
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "from-coordinator", "selector": "role=scale"])
        #expect(eventually(timeout: 20) { CoordinatorTests.inSync(coordinator, "scale-agent") }, "\(agent.log.suffix(2000))")
        #expect(agent.waitForExit(timeout: 0.5) == nil, "the agent is alive after the bundle:\n\(agent.log.suffix(2000))")
        #expect(try echoMismatch(port: bundlePort, size: 1024, seed: 2, timeout: 5) == nil)

        #expect(try herd.echoing() == Self.connections, "every connection still echoes")
        #expect(try agent.metric("weir_pipeline_connections_active", ["pipeline": "herd"]) == Double(Self.connections))
        herd.close()
        #expect(try agent.waitForMetric("weir_pipeline_connections_active", ["pipeline": "herd"], timeout: 20) { $0 == 0 } == 0)
        #expect(eventually(timeout: 10) { openDescriptors(pid: agent.pid) < 200 }, "descriptors back to baseline: \(openDescriptors(pid: agent.pid))")
    }

    @Test(
        "enforce.nftables at 5,000 connections: reloads and domain re-resolution run libnftables with descriptors above 1023",
        .enabled(if: kernelTestsUnavailable == nil && which("nft") != nil, "\(kernelTestsUnavailable ?? "needs nft installed")"))
    func nftablesWithThousandsOfConnections() throws {
        let net = try GatewayTopology()
        let answers = FileManager.default.temporaryDirectory.appendingPathComponent("weir-dns-\(UUID().uuidString)").path
        try "11.0.0.2\n".write(toFile: answers, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: answers) }
        let dns = try net.background(net.upstream, GatewayTopology.Scripts.dnsServer, [answers, "11.0.0.53", "53"])
        defer { dns.stopHelper() }
        let echoPort = 7100, port = 7101
        let echo = try ConnectionHerd.echoServer(port: echoPort, netns: net.gateway)
        defer { echo.stopHelper() }
        func enforcement(_ entries: [String]) -> String {
            """

              egress:
                stages:
                  - type: enforce.nftables
                    allow_destinations:
                      interfaces: [\(net.gatewayOutside)]
                      entries: [\(entries.joined(separator: ", "))]
                      resolvers: [11.0.0.53]
                      resolve_interval: 1s
                      min_ttl: 1s
            """
        }
        let agent = try WeirProcess(pipelines: Self.forward(port: port, echo: echoPort, extra: enforcement(["svc.example.net"])), netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        let herd = try ConnectionHerd(count: Self.connections, port: port, netns: net.gateway)
        defer { herd.close() }
        #expect(openDescriptors(pid: agent.pid) > 2 * Self.connections)

        // Each reload changes the stage (an entry added), so libnftables applies a delta; meanwhile the
        // domain's answer changes under the periodic re-resolution.
        for (round, address) in ["11.0.0.3", "11.0.0.2", "11.0.0.3"].enumerated() {
            try "\(address)\n".write(toFile: answers, atomically: true, encoding: .utf8)
            #expect(eventually(timeout: 10) { net.ruleset().contains(address) }, "round \(round): the set follows the answer")
            let entries = ["svc.example.net"] + (0...round).map { "9.9.\($0).0/24" }
            try agent.writePipelines(Self.forward(port: port, echo: echoPort, extra: enforcement(entries)))
            try agent.reload()
            #expect(agent.waitForExit(timeout: 0.5) == nil, "round \(round): the agent is alive:\n\(agent.log.suffix(2000))")
            #expect(net.ruleset().contains("9.9.\(round).0/24"), "round \(round): the reload applied")
        }
        #expect((try agent.metric("weir_config_reloads_total", ["result": "failure"]) ?? 0) == 0)
        #expect(try herd.echoing() == Self.connections, "every connection still echoes")
    }

    @Test(
        "dns.filter followed by enforce.nftables at 5,000 connections: answers reach the kernel's follow set and list reloads take over the sockets with descriptors above 1023",
        .enabled(if: kernelTestsUnavailable == nil && which("nft") != nil, "\(kernelTestsUnavailable ?? "needs nft installed")"))
    func followedDNSWithThousandsOfConnections() throws {
        let net = try GatewayTopology()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-scale-dns-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let answers = folder.appendingPathComponent("answers").path, blocklist = folder.appendingPathComponent("block.txt").path
        try "11.0.0.2\n".write(toFile: answers, atomically: true, encoding: .utf8)
        try "blocked.example.net\n".write(toFile: blocklist, atomically: true, encoding: .utf8)
        let dns = try net.background(net.upstream, GatewayTopology.Scripts.dnsServer, [answers, "11.0.0.53", "53", "1"])
        defer { dns.stopHelper() }
        let upstreamEcho = try net.background(net.upstream, GatewayTopology.Scripts.echoServer, ["7000"])
        defer { upstreamEcho.stopHelper() }
        let echoPort = 7100, port = 7101
        let echo = try ConnectionHerd.echoServer(port: echoPort, netns: net.gateway)
        defer { echo.stopHelper() }
        let agent = try WeirProcess(
            pipelines: DNSFollowTests.gateway(net, blocklist: blocklist) + "\n" + tcpForwardEntry("herd", port: port, to: [echoPort]),
            netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        let herd = try ConnectionHerd(count: Self.connections, port: port, netns: net.gateway)
        defer { herd.close() }
        #expect(openDescriptors(pid: agent.pid) > 2 * Self.connections)

        for (round, address) in ["11.0.0.2", "11.0.0.3", "11.0.0.2"].enumerated() {
            try "\(address)\n".write(toFile: answers, atomically: true, encoding: .utf8)
            let answer = try DNSFollowTests.resolve(net, "svc.example.net")
            #expect(answer.contains(address), "round \(round): \(answer)")
            #expect(net.clientReaches(address, port: 7000), "round \(round): the answer opened \(address)")
            // A changed list: a new dns.filter takes over the sockets while 10,000 descriptors are open.
            try "blocked.example.net\nround\(round).example.net\n".write(toFile: blocklist, atomically: true, encoding: .utf8)
            try agent.reload()
            #expect(agent.waitForExit(timeout: 0.5) == nil, "round \(round): the agent is alive:\n\(agent.log.suffix(2000))")
            #expect(try DNSFollowTests.resolve(net, "round\(round).example.net").contains("[]"), "round \(round): the new list answers")
        }
        #expect((try agent.metric("weir_config_reloads_total", ["result": "failure"]) ?? 0) == 0)
        #expect(try (agent.metric("weir_nft_follow_answers_total", ["pipeline": "gateway", "result": "admitted"]) ?? 0) >= 3)
        #expect(try herd.echoing() == Self.connections, "every connection still echoes")
    }

    @Test(
        "shape.tc with 2,000 named client_rates entries (a dual-stack VPN's devices) and 5,000 connections open: every class made in one apply both ways, by a reload past descriptor 1023; a reload that changes one entry changes that class only; every connection kept",
        .enabled(if: kernelTestsUnavailable == nil, "\(kernelTestsUnavailable ?? "")"))
    func shapingThousandsOfNamedClientsWithThousandsOfConnections() throws {
        let net = try GatewayTopology()
        let echoPort = 7100, port = 7101
        let echo = try ConnectionHerd.echoServer(port: echoPort, netns: net.gateway)
        defer { echo.stopHelper() }
        func shaping(changed rate: String) -> String {
            let devices = (0..<2_000).map { index in
                "          - {name: d\(index), clients: [10.\(100 + index / 250).\(index % 250).2, \"fd00::\(String(index, radix: 16)):2\"], rate: \(index == 7 ? rate : "8mbit")}"
            }
            return "\n  vpn:\n    stages:\n      - type: shape.tc\n        interface: \(net.gatewayOutside)\n        direction: both\n"
                + "        per: client_ip\n        rate: 100gbit\n        client_rates:\n" + devices.joined(separator: "\n")
        }
        let agent = try WeirProcess(pipelines: Self.forward(port: port, echo: echoPort), netns: net.gateway)
        try agent.start()
        defer { agent.stop() }
        let herd = try ConnectionHerd(count: Self.connections, port: port, netns: net.gateway)
        defer { herd.close() }
        #expect(openDescriptors(pid: agent.pid) > 2 * Self.connections)
        // The shaping comes with a reload, so its first apply too runs past descriptor 1023.
        try agent.writePipelines(Self.forward(port: port, echo: echoPort, extra: shaping(changed: "8mbit")))
        try agent.reload()
        let devices = [net.gatewayOutside, "wi-" + net.gatewayOutside]
        let classes = { (device: String) in (try? net.inside(net.gateway, ["tc", "class", "show", "dev", device])) ?? "" }
        for device in devices {
            // One per device (on-demand classes of other sources may come beside them, at the stage's rate).
            #expect(classes(device).components(separatedBy: "rate 8Mbit").count - 1 == 2_000, "\(device)")
        }

        try agent.writePipelines(Self.forward(port: port, echo: echoPort, extra: shaping(changed: "9mbit")))
        try agent.reload()
        #expect(agent.waitForExit(timeout: 0.5) == nil, "the agent is alive:\n\(agent.log.suffix(2000))")
        for device in devices {
            let after = classes(device)
            #expect(after.components(separatedBy: "rate 9Mbit").count - 1 == 1 && after.components(separatedBy: "rate 8Mbit").count - 1 == 1_999, "\(device)")
        }
        #expect(agent.log.components(separatedBy: "shaping updated changes=1 ").count - 1 == 2, "one class changed on each device")
        #expect((try agent.metric("weir_config_reloads_total", ["result": "failure"]) ?? 0) == 0)
        #expect(try herd.echoing() == Self.connections, "every connection still echoes")
    }

    @Test("1,500 pipelines: a reload that changes one keeps the others' connections; the agent survives")
    func reloadWithFifteenHundredPipelines() throws {
        let echoPort = freePort()
        let echo = try ConnectionHerd.echoServer(port: echoPort)
        defer { echo.stopHelper() }
        let ordered = freePorts(1_500)
        func pipelines(changed: Int?) -> String {
            "pipelines:\n" + ordered.enumerated().map { index, port in
                tcpForwardEntry("p\(index)", port: port, to: [echoPort], extraStages: index == changed ? Self.limit : "")
            }.joined()
        }
        let agent = try WeirProcess(pipelines: pipelines(changed: nil))
        try agent.start()
        defer { agent.stop() }
        // Connections through the first ten pipelines: they must survive a reload that changes only p1499.
        let herds = try (0..<10).map { try ConnectionHerd(count: 20, port: ordered[$0]) }
        defer { herds.forEach { $0.close() } }
        #expect(openDescriptors(pid: agent.pid) > 1_500)

        try agent.writePipelines(pipelines(changed: 1_499))
        let signalled = Date()
        try agent.reload()
        print("1,500 pipelines, one changed: reload applied \(String(format: "%.0f", Date().timeIntervalSince(signalled) * 1000)) ms after SIGHUP (metrics polled)")
        #expect(agent.waitForExit(timeout: 0.5) == nil, "the agent is alive:\n\(agent.log.suffix(2000))")
        #expect(agent.log.contains("changed\": [\"p1499\"]") || agent.log.contains("changed=[\"p1499\"]") || agent.log.contains("[\"p1499\"]"))
        for herd in herds { #expect(try herd.echoing() == 20) }
        #expect(try echoMismatch(port: ordered[1_499], size: 1024, seed: 3, timeout: 5) == nil)
    }

    static let limit = """
              - type: limit.bandwidth
                rate: 100MiB/s

        """

    @Test(
        "wireguard at 2,000 connections: wireguard-go, started with descriptors above 1023, inherits none of the agent's; the link watch recreates a deleted interface",
        .enabled(if: wireguardTestsUnavailable == nil, "\(wireguardTestsUnavailable ?? "")"))
    func wireguardWithThousandsOfConnections() throws {
        let net = try NamespacePair()
        let interface = "wgs\(namespaceTag("s"))"
        let echoPort = 7100, port = 7101
        let echo = try ConnectionHerd.echoServer(port: echoPort, netns: net.agent)
        defer { echo.stopHelper() }
        let vpn = """

              vpn:
                stages:
                  - type: wireguard
                    interface: \(interface)
                    addresses: [10.88.0.1/24]
                    pool: [10.88.0.0/24]
                    peers:
                      - name: alice
            """
        let agent = try WeirProcess(pipelines: Self.forward(port: port, echo: echoPort), netns: net.agent)
        try agent.start()
        defer { agent.stop() }
        let herd = try ConnectionHerd(count: 2_000, port: port, netns: net.agent)
        defer { herd.close() }
        #expect(openDescriptors(pid: agent.pid) > 4_000)

        // The interface comes with a reload: wireguard-go is spawned by an agent holding 4,000+ descriptors.
        try agent.writePipelines(Self.forward(port: port, echo: echoPort, extra: vpn))
        try agent.reload()
        func daemon() -> Int32? {
            ((try? command([which("pgrep")!, "-f", "wireguard-go \(interface)$"]))?.output ?? "").split(separator: "\n").first.flatMap { Int32($0) }
        }
        let first = try #require(daemon(), "wireguard-go runs")
        #expect(openDescriptors(pid: first) < 32, "wireguard-go holds only its own descriptors: \(openDescriptors(pid: first))")

        // Deleted by hand: the link watch notices and the stage creates it again, still without the agent's.
        try net.inside(net.agent, ["ip", "link", "del", interface])
        #expect(eventually(timeout: 10) { (try? net.inside(net.agent, ["ip", "link", "show", interface])) != nil && daemon() != nil })
        if let second = daemon() { #expect(openDescriptors(pid: second) < 32) }
        #expect(agent.waitForExit(timeout: 0.1) == nil, "the agent is alive")
        #expect(try herd.echoing() == 2_000, "every connection still echoes")
    }
}

