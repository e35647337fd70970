import Foundation
import Testing
import WeirCore
import WeirStages

/// Stage options and pipeline shape: every error is located at the offending value and rendered
/// `FILE:LINE:COL: pipelines.ID.stages[N] (TYPE): message`.
@Suite struct PipelineValidationTests {
    /// A drop-in with one TCP forward whose listen address is `address` (value at line 5, column 18).
    private func listenAt(_ address: String) -> String {
        """
        pipelines:
          web:
            stages:
              - type: listen.tcp
                address: \(address)
              - type: connect.tcp
                addresses: [127.0.0.1:80]

        """
    }

    @Test(arguments: [
        ("999.1.1.1:80", #""999.1.1.1" is not a valid host name or address"#),
        ("10.0.0.1", #""10.0.0.1" has no port (write host:port)"#),
        ("10.0.0.1:70000", #""70000" is not a port number (0-65535)"#),
        ("db.internal:5432", #""db.internal:5432": a listen address must be an IP address, such as 0.0.0.0:5432 or [::]:5432"#),
        ("::1:80", #""::1:80": put IPv6 addresses in brackets, as [::1]:80"#),
    ])
    func badListenAddressIsLocatedAtTheValue(address: String, message: String) {
        let errors = pipelineErrors(listenAt(address), name: "web.yaml")
        #expect(errors.map(\.description) == ["web.yaml:5:18: pipelines.web.stages[0] (listen.tcp): address: " + message])
        #expect(errors.first?.location == WeirCore.SourceLocation(file: "web.yaml", line: 5, column: 18))
        #expect(errors.first?.path.stageType == "listen.tcp")
        #expect(errors.first?.path.keys == ["address"])
    }

    @Test func badTargetInAListIsLocatedAtTheItem() {
        let errors = pipelineErrors(
            """
            pipelines:
              api:
                stages:
                  - type: listen.tcp
                    address: 0.0.0.0:8443
                  - type: connect.tcp
                    addresses: [10.0.0.5:443, 10.0.0.6:0]

            """, name: "api.yaml")
        #expect(errors.map(\.description) == [
            #"api.yaml:7:35: pipelines.api.stages[1] (connect.tcp): addresses[1]: "0" is not a port number (1-65535)"#
        ])
    }

    @Test func everyErrorOfOneStageIsReported() {
        let errors = pipelineErrors(
            """
            pipelines:
              web:
                stages:
                  - type: listen.tcp
                    address: 0.0.0.0:99999
                    backlog: lots
                    colour: red
                  - type: connect.tcp
                    addresses: 127.0.0.1:80
                    connect_timeout: 3 seconds

            """, name: "p.yaml")
        #expect(errors.map(\.description) == [
            #"p.yaml:5:18: pipelines.web.stages[0] (listen.tcp): address: "99999" is not a port number (0-65535)"#,
            #"p.yaml:6:18: pipelines.web.stages[0] (listen.tcp): backlog: expected an integer, found "lots""#,
            #"p.yaml:7:9: pipelines.web.stages[0] (listen.tcp): colour: unknown key "colour" (allowed: address, backlog, idle_timeout, max_connections, type)"#,
            #"p.yaml:9:20: pipelines.web.stages[1] (connect.tcp): addresses: expected a list, found a scalar"#,
            #"p.yaml:10:26: pipelines.web.stages[1] (connect.tcp): connect_timeout: "3 seconds" is not a duration (examples: 500ms, 3s, 1m30s)"#,
        ])
    }

    @Test func integerOutOfRangeAndMissingRequiredKey() {
        let errors = pipelineErrors(
            """
            pipelines:
              web:
                stages:
                  - type: listen.tcp
                    backlog: 0
                  - type: connect.tcp
                    addresses: []

            """, name: "p.yaml")
        #expect(errors.map(\.description) == [
            "p.yaml:4:9: pipelines.web.stages[0] (listen.tcp): missing required key \"address\"",
            "p.yaml:5:18: pipelines.web.stages[0] (listen.tcp): backlog: 0 is out of range 1...65535",
            "p.yaml:7:20: pipelines.web.stages[1] (connect.tcp): addresses: needs at least one host:port",
        ])
    }

    @Test func unknownStageTypeListsTheKnownTypes() {
        let errors = pipelineErrors(
            "pipelines:\n  web:\n    stages:\n      - type: listen.quic\n        address: 0.0.0.0:443\n", name: "p.yaml")
        #expect(errors.map(\.description) == [
            #"p.yaml:4:15: pipelines.web.stages[0].type: unknown stage type "listen.quic" (known: connect.relay, connect.reverse, connect.tcp, connect.udp, count.ebpf, dns.filter, enforce.nftables, limit.bandwidth, listen.http, listen.reverse, listen.socks5, listen.tcp, listen.tls_sni, listen.udp, route.gateway, shape.tc, transform.aead, transform.mux, transform.padding, transform.tls, transform.websocket, wireguard)"#
        ])
    }

    @Test func stagesMustBeANonEmptyList() {
        #expect(pipelineErrors("pipelines:\n  a:\n    stages: []\n", name: "p.yaml").map(\.description) == [
            "p.yaml:3:13: pipelines.a.stages: a pipeline needs at least one stage"
        ])
        #expect(pipelineErrors("pipelines:\n  a:\n    stages: {}\n", name: "p.yaml").map(\.description) == [
            "p.yaml:3:13: pipelines.a.stages: expected a list, found a mapping"
        ])
        #expect(pipelineErrors("pipelines:\n  a:\n    stage: []\n", name: "p.yaml").map(\.description) == [
            "p.yaml:3:5: pipelines.a: missing required key \"stages\"",
            "p.yaml:3:5: pipelines.a.stage: unknown key \"stage\" (allowed: stages)",
        ])
    }

    @Test func pipelineIDsAreRestricted() {
        let errors = pipelineErrors("pipelines:\n  \"bad id!\":\n" + tcpForward(listen: "0.0.0.0:1"), name: "p.yaml")
        #expect(errors.map(\.description) == [
            "p.yaml:2:3: pipelines.bad id!: pipeline id must be 1-64 letters, digits, '-' or '_'"
        ])
    }

    // MARK: - Shape

    private func shapeErrors(_ stages: String) -> [String] {
        pipelineErrors("pipelines:\n  p:\n    stages:\n" + stages, name: "s.yaml").map(\.description)
    }

    @Test func listenerWithoutConnector() {
        #expect(shapeErrors("      - type: listen.tcp\n        address: 0.0.0.0:80\n") == [
            "s.yaml:4:9: pipelines.p.stages[0] (listen.tcp): a pipeline with a listener needs a connect.* stage as its last stage"
        ])
    }

    @Test func connectorWithoutListener() {
        #expect(shapeErrors("      - type: connect.udp\n        addresses: [127.0.0.1:53]\n") == [
            "s.yaml:4:9: pipelines.p.stages[0] (connect.udp): a pipeline with a connector needs a listen.* stage as its first stage"
        ])
    }

    @Test func limitBandwidthWithoutListener() {
        let errors = shapeErrors(
            "      - type: limit.bandwidth\n        rate: 1MiB/s\n      - type: connect.tcp\n        addresses: [127.0.0.1:80]\n")
        #expect(errors == [
            "s.yaml:6:9: pipelines.p.stages[1] (connect.tcp): a pipeline with a connector needs a listen.* stage as its first stage",
            "s.yaml:4:9: pipelines.p.stages[0] (limit.bandwidth): limit.bandwidth acts on forwarded traffic and needs a listen.* stage first",
        ])
    }

    @Test func listenerMustBeFirst() {
        let errors = shapeErrors(
            """
                  - type: limit.bandwidth
                    rate: 1MiB/s
                  - type: listen.tcp
                    address: 0.0.0.0:80
                  - type: connect.tcp
                    addresses: [127.0.0.1:80]

            """)
        #expect(errors == ["s.yaml:6:9: pipelines.p.stages[1] (listen.tcp): the listener must be the first stage"])
    }

    @Test func connectorMustBeLastAndUnique() {
        let errors = shapeErrors(
            """
                  - type: listen.tcp
                    address: 0.0.0.0:80
                  - type: connect.tcp
                    addresses: [127.0.0.1:80]
                  - type: connect.tcp
                    addresses: [127.0.0.1:81]

            """)
        #expect(errors == [
            "s.yaml:6:9: pipelines.p.stages[1] (connect.tcp): the connector must be the last stage",
            "s.yaml:8:9: pipelines.p.stages[2] (connect.tcp): a pipeline has at most one connector",
        ])
    }

    @Test func transportsMustMatch() {
        let errors = shapeErrors(
            "      - type: listen.udp\n        address: 0.0.0.0:53\n      - type: connect.tcp\n        addresses: [127.0.0.1:53]\n")
        #expect(errors == ["s.yaml:6:9: pipelines.p.stages[1] (connect.tcp): connect.tcp cannot carry traffic from listen.udp"])
    }
}
