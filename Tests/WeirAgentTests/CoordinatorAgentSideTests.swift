import Foundation
import NIOCore
import Testing
import WeirCore
import WeirCoordinatorProtocol
@testable import WeirAgent

/// The agent's side of the coordinator, without a coordinator: the bundle folder and the heartbeat numbers.
@Suite struct CoordinatorAgentSideTests {
    @Test("a bundle is written completely, then switched to by one rename; switching back restores the previous one")
    func managedBundle() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("weir-bundle-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let managed = ManagedBundle(directory: directory)
        #expect(managed.currentVersion == nil)
        let first = ConfigBundle(files: [.init(name: "a.yaml", content: "pipelines: {}\n")])
        #expect(try managed.install(first) == nil)
        #expect(managed.currentVersion == first.version)
        #expect(try String(contentsOfFile: directory + "/bundle/a.yaml", encoding: .utf8) == "pipelines: {}\n")
        // Documents may hold passwords: only the agent's user reads them.
        let mode = (try FileManager.default.attributesOfItem(atPath: directory + "/bundle/a.yaml")[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600)

        let second = ConfigBundle(files: [.init(name: "b.yaml", content: "pipelines: {}\n# b\n")])
        #expect(try managed.install(second) == first.version)
        #expect(!FileManager.default.fileExists(atPath: directory + "/bundle/a.yaml"))
        #expect(FileManager.default.fileExists(atPath: directory + "/bundle/b.yaml"))
        try managed.switchTo(first.version)
        #expect(managed.currentVersion == first.version)
        managed.prune()
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/bundles") == [first.version])
        // No staging folder or temporary link left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory).sorted() == ["bundle", "bundles"])
    }

    @Test("heartbeat numbers are read from the agent's own exposition, for running pipelines only")
    func pipelineReports() {
        let exposition = """
            # TYPE weir_pipeline_bytes_total counter
            weir_pipeline_bytes_total{pipeline="web",direction="in"} 1200
            weir_pipeline_bytes_total{pipeline="web",direction="out"} 34
            weir_pipeline_connections_total{pipeline="web"} 3
            weir_pipeline_connections_active{pipeline="web"} 1
            weir_pipeline_errors_total{pipeline="web",stage="connect.tcp",reason="refused"} 2
            weir_pipeline_errors_total{pipeline="web",stage="listen.tcp",reason="accept"} 1
            weir_pipeline_connections_total{pipeline="retired"} 9
            weir_wireguard_peer_receive_bytes_total{pipeline="vpn",interface="wg0",peer="alice@example.com.phone"} 5000
            weir_wireguard_peer_transmit_bytes_total{pipeline="vpn",interface="wg0",peer="alice@example.com.phone"} 7000
            weir_wireguard_peer_last_handshake_timestamp_seconds{pipeline="vpn",interface="wg0",peer="alice@example.com.phone"} 1764000000
            weir_wireguard_peer_period_bytes{pipeline="vpn",interface="wg0",peer="alice@example.com.phone"} 12000
            weir_wireguard_peer_quota_bytes{pipeline="vpn",interface="wg0",peer="alice@example.com.phone"} 1e+09
            weir_wireguard_peer_receive_bytes_total{pipeline="vpn",interface="wg0",peer="bob.laptop"} 0
            weir_wireguard_peers{pipeline="vpn",interface="wg0",state="connected"} 1
            weir_wireguard_peer_receive_bytes_total{pipeline="gone",interface="wg1",peer="carol.x"} 1
            """
        let reports = PipelineReports.read(exposition: Array(exposition.utf8), running: ["web", "idle", "vpn"])
        #expect(reports["web"] == PipelineReport(bytesIn: 1200, bytesOut: 34, connectionsTotal: 3, connectionsActive: 1, errorsTotal: 3))
        #expect(reports["idle"] == PipelineReport())
        #expect(reports["retired"] == nil && reports["gone"] == nil)
        #expect(reports["web"]?.peers == nil)
        var alice = PeerReport()
        (alice.receiveBytes, alice.transmitBytes, alice.lastHandshake, alice.periodBytes, alice.quotaBytes) = (5000, 7000, 1_764_000_000, 12000, 1e9)
        #expect(reports["vpn"]?.peers == ["alice@example.com.phone": alice, "bob.laptop": PeerReport()])
    }

    @Test("coordinator URLs: IP literals (no SNI), default ports, the Host header, and what is not a WebSocket URL")
    func coordinatorEndpoints() throws {
        let v6 = try CoordinatorSocket.Endpoint(url: "wss://[2001:db8::5]:8443/api/v1/agent/connect")
        #expect(v6.host == "2001:db8::5" && v6.port == 8443 && v6.secure && v6.isAddressLiteral)
        #expect(v6.hostHeader == "[2001:db8::5]:8443" && v6.path == "/api/v1/agent/connect")
        let v4 = try CoordinatorSocket.Endpoint(url: "wss://127.0.0.1:8443/api/v1/agent/connect?x=1")
        #expect(v4.isAddressLiteral && v4.path == "/api/v1/agent/connect?x=1")
        let named = try CoordinatorSocket.Endpoint(url: "wss://coordinator.example.net/api/v1/agent/connect")
        #expect(!named.isAddressLiteral && named.port == 443 && named.hostHeader == "coordinator.example.net")
        let plain = try CoordinatorSocket.Endpoint(url: "ws://10.1.2.3")
        #expect(!plain.secure && plain.port == 80 && plain.path == "/" && plain.isAddressLiteral)
        for bad in ["https://c.example.net", "c.example.net:8443", "wss://", "wss://:8443/x"] {
            #expect(throws: CoordinatorSocket.Failure.invalidURL(bad)) { try CoordinatorSocket.Endpoint(url: bad) }
        }
    }

    @Test("the agent answers a DNS query log question from its rings: merged newest first across pipelines, limited, an unknown pipeline named")
    func dnsQueriesAnswer() throws {
        let logs = DNSQueryLogs()
        let a = DNSQueryRing(capacity: 10), b = DNSQueryRing(capacity: 10)
        logs.install(a, for: "a")
        logs.install(b, for: "b")
        for index in 0..<6 {
            (index % 2 == 0 ? a : b).append(DNSQueryEvent(
                time: Double(index), client: DNSClient(try SocketAddress(ipAddress: "10.0.0.\(index)", port: 1))!, name: "n\(index).test", type: 28,
                result: "cached", rule: index == 4 ? "/lists/x:3" : nil, upstream: nil, latency: .nanoseconds(123_400)))
        }
        let merged = CoordinatorClient.dnsQueries(DNSQueriesRequest(id: "q", limit: 4), logs: logs)
        #expect(merged.id == "q" && merged.pipelines == ["a", "b"] && merged.error == nil)
        #expect(merged.entries.map(\.name) == ["n5.test", "n4.test", "n3.test", "n2.test"])
        #expect(merged.entries[1] == DNSQueryEntry(
            time: "1970-01-01T00:00:04.000Z", pipeline: "a", client: "10.0.0.4", name: "n4.test", type: "AAAA", result: "cached", rule: "/lists/x:3",
            upstream: nil, ms: 0.12))
        #expect(CoordinatorClient.dnsQueries(DNSQueriesRequest(id: "q", pipeline: "b", limit: 100), logs: logs).entries.map(\.pipeline) == ["b", "b", "b"])
        let unknown = CoordinatorClient.dnsQueries(DNSQueriesRequest(id: "q", pipeline: "c", limit: 100), logs: logs)
        #expect(unknown.entries.isEmpty && unknown.error?.contains("\"c\"") == true)
        #expect(CoordinatorClient.dnsQueries(DNSQueriesRequest(id: "q", limit: 1_000_000), logs: logs).entries.count == 6)
    }

    @Test("client addresses: totals summed over interfaces from count.ebpf's series (the other roll-up is no address); running pipelines only")
    func clientAddressTotals() {
        let exposition = """
            weir_ip_bytes_total{pipeline="edge",interface="eth0",ip="203.0.113.5",direction="in"} 1000
            weir_ip_bytes_total{pipeline="edge",interface="eth1",ip="203.0.113.5",direction="in"} 500
            weir_ip_bytes_total{pipeline="edge",interface="eth0",ip="203.0.113.5",direction="out"} 70
            weir_ip_bytes_total{pipeline="edge",interface="eth0",ip="2001:db8::7",direction="in"} 9
            weir_ip_bytes_total{pipeline="edge",interface="eth0",ip="other",direction="in"} 123456
            weir_ip_packets_total{pipeline="edge",interface="eth0",ip="203.0.113.5",direction="in"} 3
            weir_ip_bytes_total{pipeline="stopped",interface="eth0",ip="198.51.100.1",direction="in"} 1
            """
        let totals = ClientAddressTraffic.totals(exposition: Array(exposition.utf8), running: ["edge"])
        #expect(totals == ["edge": ["203.0.113.5": .init(bytesIn: 1500, bytesOut: 70), "2001:db8::7": .init(bytesIn: 9, bytesOut: 0)]])
    }

    @Test("client addresses: the agent's first reading is the baseline; then growth only; the busiest first, the rest wait without loss; a counter that starts again; an address that comes back")
    func clientAddressGrowth() {
        typealias T = ClientAddressTraffic.Totals
        let first: ClientAddressTraffic.Counters = ["edge": ["a": T(bytesIn: 100, bytesOut: 10), "b": T(bytesIn: 5, bytesOut: 0)]]
        var step = ClientAddressTraffic.growth(current: first, baseline: nil)
        #expect(step.growth.isEmpty, "a pinned map's history is not sent again after a restart")
        var baseline = step.next

        // a grew by 50/5, b by 1, c is new (all it has), d unchanged: with room for two, a and c go first.
        let second: ClientAddressTraffic.Counters = [
            "edge": ["a": T(bytesIn: 150, bytesOut: 15), "b": T(bytesIn: 6, bytesOut: 0), "c": T(bytesIn: 30, bytesOut: 0)]]
        step = ClientAddressTraffic.growth(current: second, baseline: baseline, limit: 2)
        #expect(step.growth == ["edge": ["a": AddressGrowth(bytesIn: 50, bytesOut: 5), "c": AddressGrowth(bytesIn: 30, bytesOut: 0)]])
        // Not sent (the heartbeat failed): the same growth again next time, nothing lost.
        #expect(ClientAddressTraffic.growth(current: second, baseline: baseline, limit: 2).growth == step.growth)
        baseline = step.next

        // b's growth waited and goes now with its further growth; a's counter started again (evicted: 20 < 150).
        let third: ClientAddressTraffic.Counters = [
            "edge": ["a": T(bytesIn: 20, bytesOut: 0), "b": T(bytesIn: 8, bytesOut: 0), "c": T(bytesIn: 30, bytesOut: 0)]]
        step = ClientAddressTraffic.growth(current: third, baseline: baseline, limit: 2)
        #expect(step.growth == ["edge": ["a": AddressGrowth(bytesIn: 20, bytesOut: 0), "b": AddressGrowth(bytesIn: 3, bytesOut: 0)]])
        baseline = step.next

        // c left the exported top (absent) and comes back with more: only its growth, against what was sent.
        step = ClientAddressTraffic.growth(current: ["edge": ["a": T(bytesIn: 20, bytesOut: 0)]], baseline: baseline)
        #expect(step.growth.isEmpty)
        baseline = step.next
        step = ClientAddressTraffic.growth(current: ["edge": ["c": T(bytesIn: 45, bytesOut: 0)]], baseline: baseline)
        #expect(step.growth == ["edge": ["c": AddressGrowth(bytesIn: 15, bytesOut: 0)]])
        baseline = step.next
        // A pipeline that appears later (a new stage, its first client) counts all it has.
        step = ClientAddressTraffic.growth(current: ["edge": ["c": T(bytesIn: 45, bytesOut: 0)], "new": ["d": T(bytesIn: 7, bytesOut: 1)]], baseline: baseline)
        #expect(step.growth == ["new": ["d": AddressGrowth(bytesIn: 7, bytesOut: 1)]])
    }
}
