import Foundation
import Testing

/// Convergence under crashes: an agent on a gateway with all four kernel stages goes through randomised
/// configuration changes, each reload cut short by kill -9 at a random moment (sometimes its restart too),
/// then starts normally. Whatever the history, the kernel must end up exactly as a clean start of the same
/// configuration in fresh namespaces leaves it (`KernelSnapshot`), and removing every kernel stage must
/// leave nothing behind.
///
/// `WEIR_CHAOS_ROUNDS` (default 5; `make chaos` runs 200) and `WEIR_CHAOS_SEED` (default: random, printed)
/// choose the run; a failure names its seed and round, and the same seed replays it.
@Suite(
    "Chaos: kill -9 during reloads converges to a clean start", .serialized,
    .enabled(if: kernelTestsUnavailable == nil && which("nft") != nil, Comment(rawValue: kernelTestsUnavailable ?? "needs nft installed")))
struct ChaosTests {
    static let rounds = Int(ProcessInfo.processInfo.environment["WEIR_CHAOS_ROUNDS"] ?? "") ?? 5
    static let seed = UInt64(ProcessInfo.processInfo.environment["WEIR_CHAOS_SEED"] ?? "") ?? UInt64.random(in: 1...UInt64(UInt32.max))

    @Test("Random configurations, kill -9 at random points, restart: the kernel equals a clean start's, and nothing stays once the stages are removed")
    func killDuringReloadsConverges() throws {
        var random = SplitMix64(seed: Self.seed)
        print("chaos: seed \(Self.seed), \(Self.rounds) rounds (WEIR_CHAOS_SEED=\(Self.seed) replays this run)")
        let net = try GatewayTopology(withBPFFS: true)
        let forwardPort = freePort()
        let agent = try WeirProcess(
            pipelines: ChaosConfig.forwardOnly(port: forwardPort), netns: net.gateway, bpfPinDir: net.pinRoot)
        func snapshot(_ topology: GatewayTopology, _ process: WeirProcess) throws -> KernelSnapshot {
            try KernelSnapshot.take(
                namespace: topology.gateway, interfaces: [topology.gatewayInside: "IN", topology.gatewayOutside: "OUT"],
                pinRoot: topology.pinRoot, stateDirectory: process.directory.path)
        }
        let pristine = try snapshot(net, agent)
        try agent.start()
        defer { agent.stop() }

        for round in 1...Self.rounds {
            let config = ChaosConfig.random(&random, forwardPort: forwardPort)
            let context = "seed \(Self.seed) round \(round)"
            try agent.writePipelines(config.yaml(inside: net.gatewayInside, outside: net.gatewayOutside))
            agent.signal(SIGHUP)
            usleep(UInt32.random(in: 0...400_000, using: &random))
            agent.kill9()
            if Bool.random(using: &random) {
                // The restart is cut short too, at some point of its first apply.
                try agent.start(wait: false)
                usleep(UInt32.random(in: 20_000...500_000, using: &random))
                agent.kill9()
            }
            try agent.start()
            #expect(agent.log.contains("agent started"), "\(context): \(agent.log.suffix(2000))")
            let converged = try snapshot(net, agent)
            if ProcessInfo.processInfo.environment["WEIR_CHAOS_PRINT"] != nil { print("\(context): \(config)\n\(converged)") }

            let clean = try GatewayTopology(withBPFFS: true)
            let reference = try WeirProcess(
                pipelines: config.yaml(inside: clean.gatewayInside, outside: clean.gatewayOutside), netns: clean.gateway,
                bpfPinDir: clean.pinRoot)
            try reference.start()
            let expected = try snapshot(clean, reference)
            reference.stop()
            #expect(converged == expected, "\(context): \(config)\n\(converged.difference(expected).joined(separator: "\n"))")
        }

        // Every kernel stage removed by a reload: what they installed goes, whatever the history left.
        try agent.writePipelines(ChaosConfig.forwardOnly(port: forwardPort))
        try agent.reload()
        let emptied = try snapshot(net, agent)
        #expect(emptied == pristine, "seed \(Self.seed): left behind\n\(emptied.difference(pristine).joined(separator: "\n"))")
    }
}

/// One randomised configuration of the gateway's kernel stages (and a forward, so it is never empty).
struct ChaosConfig: CustomStringConvertible {
    var allowlist: [String]?
    var masquerade = false
    var insideAllowlist: [String]?
    var shapeOutside: (direction: String, rate: Int, classes: Bool)?
    var shapeInside: Int?
    var count: (inside: Bool, outside: Bool, maxEntries: Int, key: String)?
    var route: (table: Int, keepLocal: Bool)?
    var forwardPort: Int

    var description: String {
        "allowlist \(allowlist ?? []) masquerade \(masquerade) inside \(insideAllowlist ?? []) shape \(String(describing: shapeOutside)) "
            + "shape-in \(String(describing: shapeInside)) count \(String(describing: count)) route \(String(describing: route))"
    }

    static let destinations = ["11.0.0.2", "11.0.0.3", "11.0.0.0/28", "1.1.1.1", "2a01:4f8::2", "2a01:4f8::/64", "{address: 10.60.0.0/24, allow_private: true}"]

    static func random(_ random: inout SplitMix64, forwardPort: Int) -> ChaosConfig {
        func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &random) < p }
        func subset(_ items: [String]) -> [String] {
            let chosen = items.filter { _ in chance(0.5) }
            return chosen.isEmpty ? [items.randomElement(using: &random)!] : chosen
        }
        var config = ChaosConfig(forwardPort: forwardPort)
        if chance(0.75) { config.allowlist = subset(destinations) }
        config.masquerade = chance(0.4)
        if chance(0.3) { config.insideAllowlist = subset(Array(destinations.prefix(4))) }
        if chance(0.7) {
            config.shapeOutside = (["egress", "ingress", "both"].randomElement(using: &random)!, [10, 20, 50].randomElement(using: &random)!, chance(0.5))
        }
        if chance(0.4) { config.shapeInside = [5, 40].randomElement(using: &random)! }
        if chance(0.7) {
            let inside = chance(0.6)
            config.count = (inside, !inside || chance(0.5), [1024, 4096].randomElement(using: &random)!, chance(0.7) ? "remote_ip" : "local_ip")
        }
        if chance(0.6) { config.route = ([100, 200].randomElement(using: &random)!, chance(0.5)) }
        return config
    }

    static func forwardOnly(port: Int) -> String { "pipelines:\n" + forward(port: port) }

    static func forward(port: Int) -> String {
        """
          fwd:
            stages:
              - type: listen.tcp
                address: 127.0.0.1:\(port)
              - type: connect.tcp
                addresses: [127.0.0.1:9]

        """
    }

    func yaml(inside: String, outside: String) -> String {
        var text = "pipelines:\n" + Self.forward(port: forwardPort)
        if allowlist != nil || masquerade {
            text += "  fw:\n    stages:\n      - type: enforce.nftables\n"
            if let allowlist {
                text += "        allow_destinations:\n          interfaces: [\(outside)]\n          entries:\n"
                text += allowlist.map { "            - \($0)\n" }.joined()
            }
            if masquerade { text += "        masquerade:\n          - {source: 10.50.0.0/24, out_interface: \(outside)}\n" }
        }
        if let insideAllowlist {
            text += "  fw-in:\n    stages:\n      - type: enforce.nftables\n"
            text += "        allow_destinations:\n          interfaces: [\(inside)]\n          entries:\n"
            text += insideAllowlist.map { "            - \($0)\n" }.joined()
        }
        if let shape = shapeOutside {
            text += "  shape:\n    stages:\n      - type: shape.tc\n        interface: \(outside)\n"
            text += "        direction: \(shape.direction)\n        rate: \(shape.rate)mbit\n        ceil: \(shape.rate * 2)mbit\n"
            if shape.classes {
                text += "        classes:\n          - {name: interactive, rate: 2mbit, ceil: \(shape.rate)mbit, match: {dscp: 46}}\n"
            }
        }
        if let rate = shapeInside {
            text += "  shape-in:\n    stages:\n      - type: shape.tc\n        interface: \(inside)\n        direction: egress\n        rate: \(rate)mbit\n"
        }
        if let count {
            let interfaces = (count.inside ? [inside] : []) + (count.outside ? [outside] : [])
            text += "  count:\n    stages:\n      - type: count.ebpf\n        interfaces: [\(interfaces.joined(separator: ", "))]\n"
            text += "        max_entries: \(count.maxEntries)\n        key: \(count.key)\n"
        }
        if let route {
            text += "  route:\n    stages:\n      - type: route.gateway\n        via: 11.0.0.2\n        via6: 2a01:4f8::2\n        table: \(route.table)\n"
            if route.keepLocal { text += "        keep_local: [1.1.1.0/24]\n" }
        }
        return text
    }
}

/// A small seeded generator (SplitMix64), so a chaos run can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
