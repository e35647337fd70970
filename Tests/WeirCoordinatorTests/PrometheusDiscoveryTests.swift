import Testing
@testable import WeirCoordinator

@Suite struct PrometheusDiscoveryTests {
    @Test("the scrape address: the announced IP and port; an unspecified host replaced by the connection's address (IPv4 from a dual-stack socket as IPv4, IPv6 in brackets)")
    func scrapeAddress() {
        #expect(MetricsTarget.address(announced: "127.0.0.1:9464", peer: "10.0.0.5") == "127.0.0.1:9464")
        #expect(MetricsTarget.address(announced: "0.0.0.0:9464", peer: "10.0.0.5") == "10.0.0.5:9464")
        #expect(MetricsTarget.address(announced: "0.0.0.0:9464", peer: "::ffff:10.0.0.5") == "10.0.0.5:9464")
        #expect(MetricsTarget.address(announced: "[::]:9464", peer: "2001:db8::7") == "[2001:db8::7]:9464")
        #expect(MetricsTarget.address(announced: "[2001:db8::1]:9100", peer: "10.0.0.5") == "[2001:db8::1]:9100")
        #expect(MetricsTarget.address(announced: "[2001:DB8:0::1]:9100", peer: nil) == "[2001:db8::1]:9100")
    }

    @Test("an announcement that is not an IP address and a port is not a target: an agent cannot point Prometheus at a name of its choosing")
    func refusedAnnouncements() {
        for announced in [nil, "", "9464", "metrics.example.com:9464", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:-1",
                          "127.0.0.1:94x", "[::1]", "1.2.3.4:80/path", "http://1.2.3.4:80", String(repeating: "1", count: 100) + ":80"] {
            #expect(MetricsTarget.address(announced: announced, peer: "10.0.0.5") == nil, "\(announced ?? "nil")")
        }
        // Unspecified host and no usable connection address: nothing to scrape.
        #expect(MetricsTarget.address(announced: "0.0.0.0:9464", peer: nil) == nil)
        #expect(MetricsTarget.address(announced: "0.0.0.0:9464", peer: "not an address") == nil)
    }

    @Test("a target group: the agent as a target label, its labels as __meta_weir_label_<name> with characters Prometheus refuses replaced")
    func targetGroup() {
        let group = PrometheusDiscovery.group(
            agent: "edge-1", address: "10.0.0.5:9464", online: false, version: "0.9.0", labels: ["role": "edge", "site.name": "north", "a-b": "c"])
        #expect(group.targets == ["10.0.0.5:9464"])
        #expect(group.labels == [
            "agent": "edge-1", "__meta_weir_agent": "edge-1", "__meta_weir_online": "false", "__meta_weir_version": "0.9.0",
            "__meta_weir_label_role": "edge", "__meta_weir_label_site_name": "north", "__meta_weir_label_a_b": "c",
        ])
        #expect(PrometheusDiscovery.labelName("zone/ü") == "zone__")
    }
}
