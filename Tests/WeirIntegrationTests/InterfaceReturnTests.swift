import Foundation
import Testing

/// Interfaces that disappear and come back (`ip link del`, then created again with the same addresses): the
/// kernel takes the qdiscs, filters, attached programs and routes with them, and the agent must put them back
/// by itself — and say, while the interface is missing, that the stages are not in force.
@Suite(
    "Service stages follow their interfaces", .serialized,
    .enabled(if: kernelTestsUnavailable == nil && which("nft") != nil, Comment(rawValue: kernelTestsUnavailable ?? "needs nft installed")))
struct InterfaceReturnTests {
    static let stages = ["shape.tc", "count.ebpf", "route.gateway", "enforce.nftables"]

    static func pipelines(_ net: NamespacePair) -> String {
        """
        pipelines:
          kernel:
            stages:
              - type: shape.tc
                interface: \(net.agentInterface)
                direction: both
                rate: 100mbit
              - type: count.ebpf
                interfaces: [\(net.agentInterface)]
              - type: route.gateway
                via: \(net.peerIPv4)
              - type: enforce.nftables
                allow_destinations:
                  interfaces: [\(net.agentInterface)]
                  entries:
                    - {address: 10.201.0.0/24, allow_private: true}
        """
    }

    func htbRoot(_ net: NamespacePair) -> Bool {
        ((try? net.inside(net.agent, ["tc", "qdisc", "show", "dev", net.agentInterface])) ?? "").contains("htb 7765:")
    }

    func gatewayRoutes(_ net: NamespacePair) -> Int {
        let routes = (try? net.inside(net.agent, ["ip", "route", "show", "proto", "87"])) ?? ""
        return routes.split(separator: "\n").filter { $0.contains("via \(net.peerIPv4)") }.count
    }

    func healthy(_ agent: WeirProcess, _ stage: String) -> Double? {
        try? agent.metric("weir_stage_healthy", ["pipeline": "kernel", "stage": stage])
    }

    @Test("An interface deleted and created again gets its shaping, counters and routes back without a reload; while it is missing, /healthz, weir_stage_healthy and the log say so")
    func interfaceComesBack() throws {
        let net = try NamespacePair()
        let echo = try net.udpHalfEcho(net.peer, family: "4", address: net.peerIPv4, port: 7005)
        defer { echo.stopHelper() }
        let agent = try WeirProcess(pipelines: Self.pipelines(net), netns: net.agent, bpfPinDir: net.pinRoot)
        try agent.start()
        defer { agent.stop() }

        #expect(htbRoot(net))
        let routes = gatewayRoutes(net)
        #expect(routes > 10, "route.gateway installs the public ranges")
        #expect(try net.python(net.agent, TrafficScripts.udpPingPong, ["4", net.peerIPv4, "7005", "10", "100"]).contains("10"))
        #expect(try CountEBPFTests.counts(agent, net, ip: net.peerIPv4, pipeline: "kernel").outPackets == 10)
        #expect(eventually { Self.stages.allSatisfy { healthy(agent, $0) == 1 } })
        #expect(try agent.health().0 == 200)

        try net.sh(["ip", "-n", net.agent, "link", "del", net.agentInterface])
        #expect(eventually { (try? agent.health())?.1.contains("interface \(net.agentInterface) is missing") == true })
        let (status, report) = try agent.health()
        #expect(status == 503)
        for stage in ["shape.tc", "count.ebpf", "enforce.nftables"] {
            #expect(report.contains("pipeline kernel \(stage)"), "\(report)")
            #expect(healthy(agent, stage) == 0, "\(stage)")
        }
        #expect(report.contains("routes via \(net.peerIPv4) are missing"), "\(report)")
        #expect(healthy(agent, "route.gateway") == 0)
        #expect(agent.log.contains("interface \(net.agentInterface) is missing"))

        // Same name, same addresses, a new ifindex: no SIGHUP, the link watch notices.
        try net.connect()
        #expect(eventually { Self.stages.allSatisfy { healthy(agent, $0) == 1 } }, "\(String(describing: try? agent.health()))")
        #expect(try agent.health().0 == 200)
        #expect(htbRoot(net), "HTB root qdisc back")
        #expect(gatewayRoutes(net) == routes, "every route back")
        for stage in ["shape.tc", "count.ebpf", "route.gateway"] {
            #expect((try agent.metric("weir_stage_repairs_total", ["pipeline": "kernel", "stage": stage]) ?? 0) >= 1, "\(stage)")
        }
        #expect(agent.log.contains("stage is in force again"))
        func classBytes(_ direction: String) throws -> Double {
            try agent.metrics().split(separator: "\n").filter {
                $0.hasPrefix("weir_tc_class_bytes_total{") && $0.contains("direction=\"\(direction)\"")
            }.reduce(0) { $0 + (Double($1.split(separator: " ").last ?? "") ?? 0) }
        }
        let shapedBefore = (egress: try classBytes("egress"), ingress: try classBytes("ingress"))
        // The programs count on the new interface, carrying on from the pinned counters.
        #expect(try net.python(net.agent, TrafficScripts.udpPingPong, ["4", net.peerIPv4, "7005", "10", "100"]).contains("10"))
        #expect(try CountEBPFTests.counts(agent, net, ip: net.peerIPv4, pipeline: "kernel").outPackets == 20, "\((try? agent.metrics())?.split(separator: "\n").filter { $0.hasPrefix("weir_ip_packets") } ?? [])")
        // Traffic is shaped again both ways: leaving the interface, and arriving (redirected to the IFB, whose
        // classes outlived the interface).
        #expect(try classBytes("egress") >= shapedBefore.egress + 10 * 128, "\(shapedBefore)")
        #expect(try classBytes("ingress") >= shapedBefore.ingress + 10 * 78, "\(shapedBefore)")
    }

    @Test("A reload puts back kernel state removed by hand (a deleted root qdisc, a deleted route) in stages it leaves running")
    func reloadRepairsUnchangedStages() throws {
        let net = try NamespacePair()
        let agent = try WeirProcess(pipelines: Self.pipelines(net), netns: net.agent, bpfPinDir: net.pinRoot)
        try agent.start()
        defer { agent.stop() }
        let routes = gatewayRoutes(net)
        // Deleting the root qdisc by hand raises no link or address notification: only a reload (or the
        // periodic check, 30 s) notices.
        try net.inside(net.agent, ["tc", "qdisc", "del", "dev", net.agentInterface, "root"])
        let first = try net.inside(net.agent, ["ip", "route", "show", "proto", "87"]).split(separator: " ").first.map(String.init) ?? ""
        try net.inside(net.agent, ["ip", "route", "del", first, "proto", "87"])
        #expect(!htbRoot(net))
        #expect(gatewayRoutes(net) == routes - 1)
        try agent.reload()
        #expect(eventually { htbRoot(net) && gatewayRoutes(net) == routes })
        #expect(eventually { (try? agent.metric("weir_stage_repairs_total", ["pipeline": "kernel", "stage": "shape.tc"])) == 1 })
        #expect(try agent.health().0 == 200)
    }
}
