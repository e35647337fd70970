import Testing
import WeirCore
import WeirStages

@testable import WeirEnforcers

/// The nftables planner and compiler, without a kernel.
@Suite struct NftablesPlanTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    func config(_ body: String) throws -> EnforceNftablesConfig {
        let pipelines = try loader.loadPipelines(yaml: "pipelines:\n  p:\n    stages:\n      - type: enforce.nftables\n" + body, name: "t.yaml")
        return try #require(pipelines.first?.stages.first?.config as? EnforceNftablesConfig)
    }

    func state(_ config: EnforceNftablesConfig, resolved: [String] = []) -> NftOwnerState {
        var compiler = NftCompiler(owner: "p", config: config, listener: nil)
        compiler.resolved = Set(resolved.map { try! IPNetwork.parse($0) })
        return compiler.compile()
    }

    let allowlist = """
                allow_destinations:
                  interfaces: [eth1]
                  entries: [8.8.8.8, 9.9.9.0/24, 9.9.9.9, 2a01:4f8::2, updates.example.com]

        """

    @Test func fromNothingEverythingIsCreatedInOrder() throws {
        let plan = NftPlan(owner: "p", from: NftOwnerState(), to: state(try config(allowlist)))
        let text = plan.commands.map(\.text)
        #expect(text.first?.contains("\"table\"") == true)
        let firstRule = try #require(text.firstIndex { $0.contains("\"rule\"") })
        let lastSet = try #require(text.lastIndex { $0.contains("\"add\":{\"set\"") })
        #expect(lastSet < firstRule, "sets exist before rules refer to them")
        // The address inside 9.9.9.0/24 is not a second element; addresses go through netlink.
        #expect(plan.addressChanges.map(\.set).sorted() == ["dst4", "dst6"])
        #expect(plan.addressChanges.first { $0.set == "dst4" }?.add.map(\.description) == ["8.8.8.8"])
        #expect(text.contains { $0.contains("\"prefix\":{\"addr\":\"9.9.9.0\",\"len\":24}") })
    }

    @Test func theSameStateTwiceIsNoChange() throws {
        let desired = state(try config(allowlist))
        #expect(NftPlan(owner: "p", from: desired, to: desired).isEmpty)
    }

    @Test func aResolvedAddressChangeIsAnAddressDeltaOnly() throws {
        let config = try config(allowlist)
        let plan = NftPlan(owner: "p", from: state(config, resolved: ["1.2.3.4", "5.6.7.8"]), to: state(config, resolved: ["5.6.7.8", "4.3.2.1"]))
        #expect(plan.commands.isEmpty)
        #expect(plan.addressChanges.count == 1)
        #expect(plan.addressChanges[0].add.map(\.description) == ["4.3.2.1"])
        #expect(plan.addressChanges[0].remove.map(\.description) == ["1.2.3.4"])
    }

    @Test func aChangedChainIsRewrittenAndAnObsoleteOneDeletedAfterFlushing() throws {
        let before = state(try config(allowlist + "        masquerade:\n          - { source: 10.8.0.0/24, out_interface: eth1 }\n"))
        let after = state(try config(allowlist.replacingOccurrences(of: "[eth1]", with: "[eth2]")))
        let text = NftPlan(owner: "p", from: before, to: after).commands.map(\.text)
        let flush = try #require(text.firstIndex { $0.contains("flush") && $0.contains("p.snat") })
        let delete = try #require(text.firstIndex { $0.contains("delete") && $0.contains("p.snat") })
        #expect(flush < delete)
        #expect(text.contains { $0.contains("flush") && $0.contains("p.dst_forward") })
        #expect(!text.contains { $0.contains("\"add\":{\"set\"") }, "sets are untouched")
    }

    @Test func profilesGoMostSpecificFirst() throws {
        let state = state(try config("""
                    profiles:
                      - { source: 10.8.0.0/24, profile: internet_only }
                      - { source: 10.8.0.10, profile: full }
                      - { source: 10.8.0.20, profile: office }
                    custom_profiles:
                      office:
                        - { destination: 10.1.0.0/16, protocol: tcp, ports: [22, 443] }

            """))
        let rules = try #require(state.chains["profiles"]?.rules.compactMap { $0.expr?.text })
        #expect(rules.count == 3)
        #expect(rules.last?.contains("internet_only") == true)
        #expect(state.chains["profile.office"]?.rules.count == 2)
    }

    @Test func validationNamesTheProblems() {
        func errors(_ body: String) -> [String] {
            do {
                _ = try loader.loadPipelines(yaml: "pipelines:\n  p:\n    stages:\n      - type: enforce.nftables\n" + body, name: "t.yaml")
                return []
            } catch {
                return error.diagnostics.map(\.description)
            }
        }
        #expect(errors("        allow_sources: [10.0.0.0/8]\n").contains { $0.contains("needs a listen.* stage") })
        #expect(errors("        profiles:\n          - { source: 10.0.0.1, profile: nope }\n").contains { $0.contains("unknown profile \"nope\"") })
        #expect(errors("        dns_hijack: { sources: [fd00::/64], resolver: 10.0.0.1 }\n").contains { $0.contains("address family") })
        #expect(errors("        allow_destinations: { interfaces: [eth0], entries: [not_a_domain] }\n").contains { $0.contains("neither an IP address") })
        #expect(errors("        {}\n").isEmpty == false)
    }
}
