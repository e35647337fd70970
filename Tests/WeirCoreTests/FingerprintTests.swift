import Foundation
import Testing
import WeirCore
import WeirStages

/// The stage fingerprint the reload diff compares: canonical, so formatting does not count but values do.
@Suite struct FingerprintTests {
    private func pipeline(_ yaml: String) throws -> PipelineSpec {
        let pipelines = try loader.loadPipelines(yaml: yaml, name: "f.yaml")
        return try #require(pipelines.first)
    }

    private let base = """
        pipelines:
          web:
            stages:
              - type: listen.tcp
                address: 0.0.0.0:8080
                backlog: 1024
              - type: connect.tcp
                addresses: [10.0.0.5:443, backend.internal:443]
                connect_timeout: 3s

        """

    @Test func keyOrderQuotingLayoutAndCommentsDoNotChangeIt() throws {
        let reference = try pipeline(base)
        let reformatted = try pipeline(
            """
            # the same pipeline, written differently
            pipelines:
              web:
                stages:
                  - backlog: 1024
                    address: '0.0.0.0:8080'
                    type: listen.tcp
                  - connect_timeout: "3s"   # per target
                    type: "connect.tcp"
                    addresses:
                      - 10.0.0.5:443
                      - "backend.internal:443"

            """)
        #expect(reformatted.fingerprint == reference.fingerprint)
        #expect(reformatted.stages.map(\.fingerprint) == reference.stages.map(\.fingerprint))
        // Positions differ, fingerprints do not.
        #expect(reformatted.stages[0].location != reference.stages[0].location)
    }

    @Test func flowStyleMappingMatchesBlockStyle() throws {
        let flow = try pipeline(
            """
            pipelines:
              web:
                stages:
                  - {type: listen.tcp, backlog: 1024, address: 0.0.0.0:8080}
                  - {type: connect.tcp, addresses: [10.0.0.5:443, backend.internal:443], connect_timeout: 3s}

            """)
        #expect(flow.fingerprint == (try pipeline(base)).fingerprint)
    }

    @Test(arguments: [
        ("backlog: 1024", "backlog: 1025"),
        ("address: 0.0.0.0:8080", "address: 0.0.0.0:8081"),
        ("connect_timeout: 3s", "connect_timeout: 4s"),
        ("[10.0.0.5:443, backend.internal:443]", "[backend.internal:443, 10.0.0.5:443]"),
        ("[10.0.0.5:443, backend.internal:443]", "[10.0.0.5:443]"),
    ])
    func changedValueChangesIt(original: String, replacement: String) throws {
        #expect(base.contains(original))
        let changed = try pipeline(base.replacingOccurrences(of: original, with: replacement))
        #expect(changed.fingerprint != (try pipeline(base)).fingerprint)
    }

    @Test func onlyTheChangedStageFingerprintDiffers() throws {
        let reference = try pipeline(base)
        let changed = try pipeline(base.replacingOccurrences(of: "connect_timeout: 3s", with: "connect_timeout: 5s"))
        #expect(changed.stages[0].fingerprint == reference.stages[0].fingerprint)
        #expect(changed.stages[1].fingerprint != reference.stages[1].fingerprint)
    }

    @Test func stageOrderCounts() throws {
        let limits = """
            pipelines:
              web:
                stages:
                  - type: listen.tcp
                    address: 0.0.0.0:8080
                  - type: limit.bandwidth
                    rate: 10MiB/s
                  - type: limit.bandwidth
                    rate: 80mbit
                    per: pipeline
                  - type: connect.tcp
                    addresses: [127.0.0.1:80]

            """
        let swapped = limits
            .replacingOccurrences(of: "rate: 10MiB/s\n", with: "RATE_A\n")
            .replacingOccurrences(of: "rate: 80mbit\n", with: "rate: 10MiB/s\n")
            .replacingOccurrences(of: "RATE_A\n", with: "rate: 80mbit\n")
        #expect(swapped != limits)
        let a = try pipeline(limits)
        let b = try pipeline(swapped)
        #expect(a.stages.count == 4)
        #expect(a.fingerprint != b.fingerprint)
    }
}
