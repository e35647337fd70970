import Foundation
import Testing

/// count.ebpf against the real kernel: the agent runs in one namespace of a veth pair, traffic comes from
/// real sockets in both, and the exported counters are compared with what was sent and with the kernel's
/// own SNMP counters.
@Suite(
    "count.ebpf in network namespaces", .serialized,
    .enabled(if: kernelTestsUnavailable == nil, Comment(rawValue: kernelTestsUnavailable ?? "")))
struct CountEBPFTests {
    /// A drop-in with one pipeline that only counts, on the agent's side of the veth pair.
    static func countPipeline(_ net: NamespacePair, id: String = "veth", options: String = "") -> String {
        """
        pipelines:
          \(id):
            stages:
              - type: count.ebpf
                interfaces: [\(net.agentInterface)]
        \(options)
        """
    }

    static func startAgent(_ net: NamespacePair, pipelines: String) throws -> WeirProcess {
        let agent = try WeirProcess(pipelines: pipelines, netns: net.agent, bpfPinDir: net.pinRoot)
        try agent.start()
        return agent
    }

    /// in/out bytes and packets of one address on the agent's interface.
    struct Counts: Equatable, CustomStringConvertible {
        var inBytes = 0.0, inPackets = 0.0, outBytes = 0.0, outPackets = 0.0
        var description: String { "in \(inBytes) B/\(inPackets) p, out \(outBytes) B/\(outPackets) p" }

        static func - (a: Counts, b: Counts) -> Counts {
            Counts(inBytes: a.inBytes - b.inBytes, inPackets: a.inPackets - b.inPackets, outBytes: a.outBytes - b.outBytes, outPackets: a.outPackets - b.outPackets)
        }
    }

    static func counts(_ agent: WeirProcess, _ net: NamespacePair, ip: String, pipeline: String = "veth") throws -> Counts {
        let exposition = try agent.metrics()
        func read(_ name: String, _ direction: String) -> Double {
            value(in: exposition, name, ["pipeline": pipeline, "interface": net.agentInterface, "ip": ip, "direction": direction]) ?? 0
        }
        return Counts(
            inBytes: read("weir_ip_bytes_total", "in"), inPackets: read("weir_ip_packets_total", "in"),
            outBytes: read("weir_ip_bytes_total", "out"), outPackets: read("weir_ip_packets_total", "out"))
    }

    /// Programs of count.ebpf loaded anywhere on the host (bpftool lists all namespaces').
    static func loadedPrograms() throws -> [String] {
        let output = try command([which("bpftool")!, "prog", "show"]).output
        return output.split(separator: "\n").filter { $0.contains("weir_count_in") || $0.contains("weir_count_out") }.map(String.init)
    }

    @Test("UDP over IPv4 and IPv6 is counted exactly, both ways, and agrees with the kernel's SNMP counters")
    func exactUDPCounts() throws {
        let net = try NamespacePair()
        let echo4 = try net.udpHalfEcho(net.peer, family: "4", address: net.peerIPv4, port: 7001)
        let echo6 = try net.udpHalfEcho(net.peer, family: "6", address: net.peerIPv6, port: 7001)
        defer { echo4.stopHelper(); echo6.stopHelper() }
        let agent = try Self.startAgent(net, pipelines: Self.countPipeline(net))
        defer { agent.stop() }

        let kernelBefore = try net.snmp(net.agent)
        #expect(try net.python(net.agent, TrafficScripts.udpPingPong, ["4", net.peerIPv4, "7001", "200", "1000"]).contains("200"))
        #expect(try net.python(net.agent, TrafficScripts.udpPingPong, ["6", net.peerIPv6, "7001", "150", "600"]).contains("150"))
        let kernelAfter = try net.snmp(net.agent)

        // IP packet lengths: payload + 8 (UDP) + 20 (IPv4) or 40 (IPv6).
        let v4 = try Self.counts(agent, net, ip: net.peerIPv4)
        #expect(v4 == Counts(inBytes: 200 * 528, inPackets: 200, outBytes: 200 * 1028, outPackets: 200), "\(v4)")
        let v6 = try Self.counts(agent, net, ip: net.peerIPv6)
        #expect(v6 == Counts(inBytes: 150 * 348, inPackets: 150, outBytes: 150 * 648, outPackets: 150), "\(v6)")

        func kernel(_ name: String) -> Double { Double((kernelAfter[name] ?? 0) - (kernelBefore[name] ?? 0)) }
        #expect(v4.outPackets == kernel("Udp.OutDatagrams"))
        #expect(v4.inPackets == kernel("Udp.InDatagrams"))
        #expect(v6.outPackets == kernel("Udp6OutDatagrams"))
        #expect(v6.inPackets == kernel("Udp6InDatagrams"))
        // Keyed by remote address: nothing is counted under the agent's own.
        #expect(try Self.counts(agent, net, ip: net.agentIPv4) == Counts())
    }

    /// At most the payload a namespace's retransmitted TCP segments carried between two SNMP readings: one MSS
    /// (1460 bytes on these 1500-byte links) each.
    static func retransmittedPayload(_ after: [String: Int], _ before: [String: Int]) -> Double {
        Double(after["Tcp.RetransSegs"]! - before["Tcp.RetransSegs"]!) * 1460
    }

    @Test("TCP is counted per GSO segment: packets equal the kernel's TCP segment counters, bytes add each segment's headers")
    func tcpCountsBySegment() throws {
        let net = try NamespacePair()
        let server = try net.background(net.peer, TrafficScripts.tcpReadThenReply, ["4", net.peerIPv4, "7002", "\(1 << 20)"])
        defer { server.stopHelper() }
        let agent = try Self.startAgent(net, pipelines: Self.countPipeline(net))
        defer { agent.stop() }

        // Segments each side sent, from the kernel: no scrape of /metrics (TCP over loopback) may fall in between.
        let sent = 3 << 20
        let (agentBefore, peerBefore) = (try net.snmp(net.agent), try net.snmp(net.peer))
        let received = try net.python(net.agent, TrafficScripts.tcpSendThenRead, ["4", net.peerIPv4, "7002", "\(sent)"])
        #expect(received.contains("\(1 << 20)"))
        usleep(500_000)  // the last ACKs
        let (agentAfter, peerAfter) = (try net.snmp(net.agent), try net.snmp(net.peer))
        // OutSegs leaves out retransmitted segments (Linux counts them in RetransSegs); both go on the wire.
        func wire(_ after: [String: Int], _ before: [String: Int]) -> Double {
            Double(after["Tcp.OutSegs"]! - before["Tcp.OutSegs"]! + after["Tcp.RetransSegs"]! - before["Tcp.RetransSegs"]!)
        }
        let kernelOut = wire(agentAfter, agentBefore)
        let kernelIn = wire(peerAfter, peerBefore)

        let counts = try Self.counts(agent, net, ip: net.peerIPv4)
        #expect(counts.outPackets == kernelOut, "counted \(counts); the agent's side sent \(kernelOut) segments")
        #expect(counts.inPackets == kernelIn, "counted \(counts); the peer sent \(kernelIn) segments")
        // Every segment carries a 20-byte IPv4 header and a 20-60 byte TCP header; a retransmitted segment
        // carries its payload again.
        let retransmitted = Self.retransmittedPayload
        #expect(counts.outBytes >= Double(sent) + counts.outPackets * 40)
        #expect(counts.outBytes <= Double(sent) + counts.outPackets * 80 + retransmitted(agentAfter, agentBefore), "counted \(counts)")
        #expect(counts.inBytes >= Double(1 << 20) + counts.inPackets * 40)
        #expect(counts.inBytes <= Double(1 << 20) + counts.inPackets * 80 + retransmitted(peerAfter, peerBefore), "counted \(counts)")
    }

    @Test("Counts continue across an agent restart and a reload that resizes the map; removing the stage leaves nothing")
    func countsSurviveRestartAndReload() throws {
        let net = try NamespacePair()
        let echo = try net.udpHalfEcho(net.peer, family: "4", address: net.peerIPv4, port: 7003)
        defer { echo.stopHelper() }
        let pins = "\(net.pinRoot)/veth/count-v1-remote_ip-32-128-65536"

        var agent = try Self.startAgent(net, pipelines: Self.countPipeline(net))
        try net.python(net.agent, TrafficScripts.udpPingPong, ["4", net.peerIPv4, "7003", "40", "100"])
        let first = try Self.counts(agent, net, ip: net.peerIPv4)
        #expect(first == Counts(inBytes: 40 * 78, inPackets: 40, outBytes: 40 * 128, outPackets: 40), "\(first)")
        agent.stop()
        #expect(FileManager.default.fileExists(atPath: pins + "/weir_ip_counts"), "stopping keeps the pinned counters")
        #expect(try eventually { try Self.loadedPrograms().isEmpty }, "stopping detaches and unloads the programs")

        // Pins of a pipeline removed while the agent was down are swept at the next start.
        try FileManager.default.createDirectory(atPath: "\(net.pinRoot)/gone/count-v1-remote_ip-32-128-1024", withIntermediateDirectories: true)
        // And so is what a kill -9 between carrying counters over and removing the old map leaves beside a kept
        // pipeline's pins.
        try FileManager.default.createDirectory(atPath: "\(net.pinRoot)/veth/count-v1-remote_ip-32-128-2048", withIntermediateDirectories: true)
        agent = try Self.startAgent(net, pipelines: Self.countPipeline(net))
        defer { agent.stop() }
        #expect(!FileManager.default.fileExists(atPath: "\(net.pinRoot)/gone"))
        #expect(try FileManager.default.contentsOfDirectory(atPath: "\(net.pinRoot)/veth") == ["count-v1-remote_ip-32-128-65536"])
        #expect(try Self.counts(agent, net, ip: net.peerIPv4) == first, "a restarted agent continues from the pinned counters")
        try net.python(net.agent, TrafficScripts.udpPingPong, ["4", net.peerIPv4, "7003", "60", "100"])
        let second = try Self.counts(agent, net, ip: net.peerIPv4)
        #expect(second == Counts(inBytes: 100 * 78, inPackets: 100, outBytes: 100 * 128, outPackets: 100), "\(second)")

        // A changed definition (max_entries) gets a new map, filled from the old one.
        try agent.writePipelines(Self.countPipeline(net, options: "        max_entries: 4096\n"))
        try agent.reload()
        #expect(try Self.counts(agent, net, ip: net.peerIPv4) == second, "counts carried over into the resized map")
        #expect(!FileManager.default.fileExists(atPath: pins), "the old map's pins are gone")
        #expect(FileManager.default.fileExists(atPath: "\(net.pinRoot)/veth/count-v1-remote_ip-32-128-4096/weir_ip_counts"))
        #expect(try agent.metric("weir_ebpf_map_max_entries", ["pipeline": "veth"]) == 4096)
        try net.python(net.agent, TrafficScripts.udpPingPong, ["4", net.peerIPv4, "7003", "10", "100"])
        #expect(try Self.counts(agent, net, ip: net.peerIPv4).outPackets == 110)
        #expect(try Self.loadedPrograms().count == 2, "one program per direction after the reload")

        // Removing the pipeline removes everything it put in the kernel and the pins.
        try agent.writePipelines("pipelines:\n\(tcpForwardEntry("other", port: freePort(), to: [freePort()]))")
        try agent.reload()
        #expect(try eventually { try Self.loadedPrograms().isEmpty }, "programs unloaded")
        #expect(!FileManager.default.fileExists(atPath: "\(net.pinRoot)/veth"), "pins removed")
        #expect(!FileManager.default.fileExists(atPath: net.pinRoot), "the pin directory too, once no count.ebpf stage is left")
        #expect(try agent.metric("weir_ebpf_map_entries", ["pipeline": "veth"]) == nil, "series gone")
    }

    @Test("clsact fallback: only our filter is added and removed; another filter on the interface stays", arguments: ["clsact", "tcx"])
    func attachModes(mode: String) throws {
        let net = try NamespacePair()
        // Somebody else's filter on the same hook.
        try net.inside(net.agent, ["tc", "qdisc", "add", "dev", net.agentInterface, "clsact"])
        try net.inside(net.agent, ["tc", "filter", "add", "dev", net.agentInterface, "ingress", "prio", "2", "protocol", "ip", "u32", "match", "u32", "0", "0", "classid", "1:1"])
        let echo = try net.udpHalfEcho(net.peer, family: "6", address: net.peerIPv6, port: 7004)
        defer { echo.stopHelper() }
        let agent = try Self.startAgent(net, pipelines: Self.countPipeline(net, options: "        attach: \(mode)\n"))
        defer { agent.stop() }

        func filters(_ hook: String) throws -> String { try net.inside(net.agent, ["tc", "filter", "show", "dev", net.agentInterface, hook]) }
        func links() throws -> Int {
            try command([which("bpftool")!, "link", "show"]).output.split(separator: "\n").filter { $0.contains("type 11") || $0.contains("tcx") }.count
        }
        if mode == "clsact" {
            #expect(try filters("ingress").contains("weir_count_in"))
            #expect(try filters("egress").contains("weir_count_out"))
        } else {
            #expect(try links() >= 2)
            #expect(try !filters("ingress").contains("weir_count"))
        }
        try net.python(net.agent, TrafficScripts.udpPingPong, ["6", net.peerIPv6, "7004", "25", "200"])
        #expect(try Self.counts(agent, net, ip: net.peerIPv6) == Counts(inBytes: 25 * 148, inPackets: 25, outBytes: 25 * 248, outPackets: 25))

        try agent.writePipelines("pipelines:\n\(tcpForwardEntry("other", port: freePort(), to: [freePort()]))")
        try agent.reload()
        #expect(try !filters("ingress").contains("weir_count"))
        #expect(try !filters("egress").contains("weir_count"))
        #expect(try filters("ingress").contains("u32"), "the other filter is untouched")
        #expect(try eventually { try links() == 0 && Self.loadedPrograms().isEmpty })
        #expect(!FileManager.default.fileExists(atPath: "\(net.pinRoot)/veth"))
    }

    @Test("5,000 spoofed sources into a 1,024-entry map: entries stay bounded, evictions and the top-N roll-up show")
    func floodIsBounded() throws {
        let net = try NamespacePair()
        let agent = try Self.startAgent(net, pipelines: Self.countPipeline(net, options: "        max_entries: 1024\n        top_n: 100\n"))
        defer { agent.stop() }
        #expect(try net.python(net.peer, TrafficScripts.spoofedSources, ["5000", net.agentIPv4]).contains("5000"))

        let exposition = try agent.metrics()
        let entries = try #require(value(in: exposition, "weir_ebpf_map_entries", ["pipeline": "veth"]))
        let evictions = try #require(value(in: exposition, "weir_ebpf_map_evictions_total", ["pipeline": "veth"]))
        #expect(entries > 0 && entries <= 1024, "entries: \(entries)")
        #expect(evictions >= 5000 - 1024, "evictions: \(evictions)")
        #expect(evictions + entries >= 5000)
        let series = exposition.split(separator: "\n").filter { $0.hasPrefix("weir_ip_bytes_total{pipeline=\"veth\"") }
        #expect(series.count <= (100 + 1) * 2, "top 100 addresses plus ip=\"other\", in and out")
        let other = try #require(value(in: exposition, "weir_ip_packets_total", ["pipeline": "veth", "ip": "other", "direction": "in"]))
        let listed = series.filter { !$0.contains("ip=\"other\"") }.count / 2
        #expect(listed == 100)
        #expect(other == entries - 100, "each of the other addresses sent one packet")
        #expect(value(in: exposition, "weir_ip_other_addresses", ["pipeline": "veth"]) == entries - 100)
        let (status, report) = try promtoolCheck(exposition)
        #expect(status == 0, "promtool: \(report)")

        // The per-address dashboard: every query answers from a real Prometheus beside the agent.
        try PrometheusServer.expectDashboardsAnswer(["weir-per-ip"], scraping: agent, netns: net.agent) {
            _ = try net.python(net.peer, TrafficScripts.spoofedSources, ["200", net.agentIPv4])
        }
    }

    @Test("Inside a forward pipeline it counts the listener's clients only, not the connection to the target")
    func countsListenerClients() throws {
        let net = try NamespacePair()
        let server = try net.background(net.peer, TrafficScripts.tcpReadThenReply, ["4", net.peerIPv4, "7005", "\(2 << 20)"])
        defer { server.stopHelper() }
        let pipelines = """
            pipelines:
              fwd:
                stages:
                  - type: listen.tcp
                    address: \(net.agentIPv4):7100
                  - type: count.ebpf
                  - type: connect.tcp
                    addresses: [\(net.peerIPv4):7005]
            """
        let agent = try Self.startAgent(net, pipelines: pipelines)
        defer { agent.stop() }
        // The peer is both the client (to port 7100) and the target (port 7005); only the first is counted.
        let (agentBefore, peerBefore) = (try net.snmp(net.agent), try net.snmp(net.peer))
        let received = try net.python(net.peer, TrafficScripts.tcpSendThenRead, ["4", net.agentIPv4, "7100", "\(1 << 20)"])
        #expect(received.contains("\(2 << 20)"))
        var counts = Counts()
        _ = try eventually {
            counts = try Self.counts(agent, net, ip: net.peerIPv4, pipeline: "fwd")
            return counts.inBytes >= Double(1 << 20) && counts.outBytes >= Double(2 << 20)
        }
        // Payload plus 40-80 bytes of headers a segment, plus the payload of retransmitted segments (at most one
        // MSS each; the counters include the target connection's retransmits, so this bounds, not equals).
        let (agentAfter, peerAfter) = (try net.snmp(net.agent), try net.snmp(net.peer))
        let retransmitted = Self.retransmittedPayload
        #expect(counts.inBytes >= Double(1 << 20) + counts.inPackets * 40, "\(counts)")
        #expect(counts.inBytes <= Double(1 << 20) + counts.inPackets * 80 + retransmitted(peerAfter, peerBefore), "\(counts)")
        #expect(counts.outBytes >= Double(2 << 20) + counts.outPackets * 40, "\(counts)")
        #expect(counts.outBytes <= Double(2 << 20) + counts.outPackets * 80 + retransmitted(agentAfter, agentBefore), "\(counts)")
        // Loopback carries the listener's address too only if it has it: here only the veth does.
        #expect(try agent.metric("weir_ebpf_map_entries", ["pipeline": "fwd"]) == 1)
    }

    @Test("per client address through the coordinator: count.ebpf pushed in a bundle; the console's busiest addresses and its CSV per address add up to the agent's own per-IP counters")
    func clientAddressHistory() throws {
        let net = try NamespacePair()
        let coordinator = try CoordinatorProcess(pki: try TestPKI(), netns: net.agent)
        try coordinator.start()
        defer { coordinator.stop() }
        let agent = try WeirProcess(
            pipelines: "pipelines: {}", extra: try coordinator.agentSection(token: try coordinator.enrollmentToken(), labels: [:], agent: "counter"),
            netns: net.agent, bpfPinDir: net.pinRoot, id: "counter")
        try agent.start()
        defer { agent.stop() }
        #expect(eventually(timeout: 10) { CoordinatorTests.inSync(coordinator, "counter") })
        try coordinator.admin("PUT", "/api/v1/pipelines/veth", yaml: Self.countPipeline(net))
        try coordinator.admin("POST", "/api/v1/assignments", json: ["pipeline": "veth", "agent": "counter"])
        #expect(eventually(timeout: 10) {
            CoordinatorTests.inSync(coordinator, "counter") && (try? agent.metrics())?.contains("weir_ebpf_map_entries{pipeline=\"veth\"") == true
        }, "\(agent.log)")

        let echo = try net.udpHalfEcho(net.peer, family: "4", address: net.peerIPv4, port: 7001)
        defer { echo.stopHelper() }
        for round in 0..<3 {
            #expect(try net.python(net.agent, TrafficScripts.udpPingPong, ["4", net.peerIPv4, "7001", "100", "1000"]).contains("100"), "round \(round)")
            usleep(700_000)  // across heartbeats: the history adds their growth up
        }
        let counts = try Self.counts(agent, net, ip: net.peerIPv4)
        #expect(counts.inBytes == 300 * 528 && counts.outBytes == 300 * 1028, "\(counts)")

        let browser = ConsoleClient(coordinator)
        try browser.signIn("admin", coordinator.consoleAdminPassword)
        var sums = (0.0, 0.0)
        #expect(eventually(timeout: 10) {
            let csv = (try? browser.get("/traffic.csv?range=1h&by=address&agent=counter").body) ?? ""
            let rows = csv.split(separator: "\r\n").dropFirst().map { $0.split(separator: ",").map(String.init) }
            let mine = rows.filter { $0.count == 7 && $0[2] == "counter" && $0[3] == "veth" && $0[4] == net.peerIPv4 }
            sums = (mine.reduce(0) { $0 + (Double($1[5]) ?? 0) }, mine.reduce(0) { $0 + (Double($1[6]) ?? 0) })
            return sums == (counts.inBytes, counts.outBytes)
        }, "CSV \(sums) vs the agent's \(counts)")
        // The agent's own address is no client; the busiest addresses and one address's chart and CSV.
        let page = try browser.get("/traffic?range=1h&agent=counter")
        #expect(page.body.contains("data-address=\"\(net.peerIPv4)\"") && !page.body.contains("data-address=\"\(net.agentIPv4)\""), "\(page.body)")
        let chart = try browser.get("/traffic.svg?range=1h&address=\(net.peerIPv4)")
        #expect(chart.body.hasPrefix("<svg") && chart.body.contains("<polyline"))
        let one = try browser.get("/traffic.csv?range=24h&address=\(net.peerIPv4)").body.split(separator: "\r\n").dropFirst()
        #expect(one.reduce(0.0) { $0 + (Double($1.split(separator: ",")[5]) ?? 0) } == counts.inBytes)
    }
}
