import Testing
import WeirCore
import WeirStages

@testable import WeirEnforcers

/// enforce.nftables' references to dns.filter pipelines: resolution at load, the compiled sets and rules,
/// and the scope of `domains_from` entries — without a kernel.
@Suite struct NftablesFollowTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    func gateway(dnsListen: String, hijack: String = "dns", follow: String = "{domains_from: dns, domains: [example.com], groups: [staff]}") throws -> EnforceNftablesConfig {
        let yaml = """
            pipelines:
              dns:
                stages:
                  - type: dns.filter
                    listen: \(dnsListen)
                    upstreams: [192.0.2.53, tls://192.0.2.54#dns.example]
                    groups:
                      - {name: staff, sources: [10.8.1.0/24]}
              gw:
                stages:
                  - type: enforce.nftables
                    dns_hijack: {sources: [10.8.0.0/16], resolver: \(hijack)}
                    allow_destinations:
                      interfaces: [eth1]
                      entries: [\(follow)]
            """
        let pipelines = try loader.loadPipelines(yaml: yaml, name: "t.yaml")
        return try #require(pipelines.first { $0.id == "gw" }?.stages.first?.config as? EnforceNftablesConfig)
    }

    @Test func hijackByPipelineNameTakesTheListenAddress() throws {
        let specific = try gateway(dnsListen: "10.8.0.1:5353")
        #expect(specific.dnsHijack?.resolver?.description == "10.8.0.1")
        #expect(specific.dnsHijack?.port == 5353)
        let compiled = NftCompiler(owner: "gw", config: specific, listener: nil).compile()
        let rule = try #require(compiled.chains["dns_hijack"]?.rules.first?.expr?.text)
        #expect(rule.contains("\"dnat\"") && rule.contains("10.8.0.1") && rule.contains("5353"))

        // Listening everywhere: redirect to the address the query arrived at.
        let everywhere = try gateway(dnsListen: "0.0.0.0:53")
        #expect(everywhere.dnsHijack?.resolver == nil)
        let redirect = try #require(NftCompiler(owner: "gw", config: everywhere, listener: nil).compile().chains["dns_hijack"]?.rules.first?.expr?.text)
        #expect(redirect.contains("\"redirect\"") && !redirect.contains("dnat"))
    }

    @Test func aChangedListenChangesTheFingerprint() throws {
        func fingerprint(_ listen: String) throws -> String {
            let yaml = """
                pipelines:
                  dns:
                    stages:
                      - {type: dns.filter, listen: "\(listen)", upstreams: [192.0.2.53]}
                  gw:
                    stages:
                      - type: enforce.nftables
                        dns_hijack: {sources: [10.8.0.0/16], resolver: dns}
                """
            return try #require(try loader.loadPipelines(yaml: yaml, name: "t.yaml").first { $0.id == "gw" }?.fingerprint)
        }
        #expect(try fingerprint("10.8.0.1:53") != fingerprint("10.8.0.2:53"))
    }

    @Test func followedAnswersGetConcatenatedSetsWithTimeoutsAndTheUpstreamsAreLetOut() throws {
        let config = try gateway(dnsListen: "10.8.0.1:53")
        let state = NftCompiler(owner: "gw", config: config, listener: nil).compile()
        #expect(state.sets["follow4"] == .init(type: "ipv4_addr . ipv4_addr", interval: false, counter: false, size: 65536, timeout: true))
        #expect(state.sets["follow6"]?.type == "ipv6_addr . ipv6_addr")
        #expect(state.addresses["follow4"] == nil, "the stage fills them at run time, the planner never touches their elements")
        let forward = (state.chains["dst_forward"]?.rules ?? []).compactMap { $0.expr?.text }
        #expect(forward.contains { $0.contains("concat") && $0.contains("@gw.follow4") })
        let output = (state.chains["dst_output"]?.rules ?? []).compactMap { $0.expr?.text }
        #expect(!output.contains { $0.contains("follow") }, "the host's own processes are not followed")
        #expect(output.contains { $0.contains("192.0.2.53") } && output.contains { $0.contains("192.0.2.54") } && output.contains { $0.contains("853") })
        let plan = NftPlan(owner: "gw", from: NftOwnerState(), to: state)
        let set = try #require(plan.commands.map(\.text).first { $0.contains("gw.follow4") && $0.contains("\"add\":{\"set\"") })
        #expect(set.contains("[\"ipv4_addr\",\"ipv4_addr\"]") && set.contains("\"timeout\""), "\(set)")
    }

    @Test func scopeByDomainAndGroup() throws {
        let rule = EnforceNftablesConfig.FollowedDNS(pipeline: "dns", domains: ["example.com"], groups: ["staff"], allowPrivate: false)
        #expect(rule.follows(name: "example.com", group: "staff"))
        #expect(rule.follows(name: "cdn.example.com", group: "staff"))
        #expect(!rule.follows(name: "badexample.com", group: "staff"))
        #expect(!rule.follows(name: "example.com", group: nil), "the default group is not listed")
        let everything = EnforceNftablesConfig.FollowedDNS(pipeline: "dns", domains: [], groups: [], allowPrivate: false)
        #expect(everything.follows(name: "anything.net", group: nil))
    }

    @Test func unresolvableReferencesAreErrorsAtTheStage() throws {
        do {
            _ = try gateway(dnsListen: "10.8.0.1:53", follow: "{domains_from: dns, groups: [guests]}")
            Issue.record("an unknown group must be refused")
        } catch {
            #expect("\(error)".contains("groups guests are not groups of its dns.filter (it has: default, staff)"), "\(error)")
        }
        do {
            _ = try gateway(dnsListen: "10.8.0.1:53", hijack: "gw")
            Issue.record("a pipeline without dns.filter must be refused")
        } catch {
            #expect("\(error)".contains("t.yaml:"), "\(error)")
            #expect("\(error)".contains("dns_hijack.resolver: pipeline \"gw\" has no dns.filter stage"), "\(error)")
        }
    }
}
