import Testing
import WeirCore
import WeirLimiters
import WeirStages

/// Decoding `limit.bandwidth` options through the real loader.
@Suite struct LimitBandwidthConfigTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    private func document(_ options: String) -> String {
        """
        pipelines:
          capped:
            stages:
              - type: listen.tcp
                address: 0.0.0.0:8081
              - type: limit.bandwidth
        \(options)
              - type: connect.tcp
                addresses: [127.0.0.1:8000]

        """
    }

    private func decode(_ options: String) throws -> LimitBandwidthConfig {
        let pipelines = try loader.loadPipelines(yaml: document(options), name: "l.yaml")
        let stage = try #require(pipelines.first?.stages[1])
        #expect(stage.type == "limit.bandwidth")
        #expect(stage.role == .filter([.stream, .datagram]))
        return try #require(stage.config as? LimitBandwidthConfig)
    }

    private func errors(_ options: String) -> [String] {
        do {
            _ = try loader.loadPipelines(yaml: document(options), name: "l.yaml")
            Issue.record("expected errors")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func defaultsArePerConnectionWithFivePercentBurst() throws {
        let config = try decode("        rate: 10MiB/s")
        #expect(config.rate == 10_485_760)
        #expect(config.per == .connection)
        #expect(config.burst == 524_288)  // 10 MiB/s × 50 ms
    }

    @Test func defaultBurstIsAtLeast64KiB() throws {
        let config = try decode("        rate: 1MiB/s")
        #expect(config.rate == 1_048_576)
        #expect(config.burst == 65_536)  // 5% would be 52428.8
        #expect(try decode("        rate: 8kbit").burst == 65_536)
    }

    @Test func defaultBurstForBitRates() throws {
        let config = try decode("        rate: 1gbit")
        #expect(config.rate == 125_000_000)
        #expect(config.burst == 6_250_000)
    }

    @Test func explicitPerAndBurst() throws {
        let config = try decode("        rate: 80mbit\n        per: pipeline\n        burst: 100000")
        #expect(config.rate == 10_000_000)
        #expect(config.per == .pipeline)
        #expect(config.burst == 100_000)
        #expect(try decode("        rate: 80mbit\n        per: connection").per == .connection)
    }

    @Test func invalidPerIsAnError() {
        #expect(errors("        rate: 1MiB/s\n        per: client") == [
            #"l.yaml:8:14: pipelines.capped.stages[1] (limit.bandwidth): per: "client" is not one of connection, pipeline"#
        ])
    }

    @Test func rateIsRequiredAndValidated() {
        #expect(errors("        per: pipeline") == [
            #"l.yaml:6:9: pipelines.capped.stages[1] (limit.bandwidth): missing required key "rate""#
        ])
        #expect(errors("        rate: 100Mbps") == [
            #"l.yaml:7:15: pipelines.capped.stages[1] (limit.bandwidth): rate: "100Mbps" is ambiguous: write bits as 100Mbit or bytes as 100MB/s"#
        ])
    }

    @Test func burstMustBeAPositiveInteger() {
        #expect(errors("        rate: 1MiB/s\n        burst: 0") == [
            "l.yaml:8:16: pipelines.capped.stages[1] (limit.bandwidth): burst: 0 is out of range 1...1099511627776"
        ])
        #expect(errors("        rate: 1MiB/s\n        burst: 64KiB") == [
            #"l.yaml:8:16: pipelines.capped.stages[1] (limit.bandwidth): burst: expected an integer, found "64KiB""#
        ])
    }

    @Test func unknownOptionNamesTheAllowedOnes() {
        #expect(errors("        rate: 1MiB/s\n        ceil: 2MiB/s") == [
            "l.yaml:8:9: pipelines.capped.stages[1] (limit.bandwidth): ceil: unknown key \"ceil\" (allowed: burst, per, rate, type)"
        ])
    }
}
