import Foundation
import Testing
import WeirCore
import WeirVPN
import WeirStages

@testable import WeirTunnels

/// The wireguard stage's pure parts: keys, the UAPI answer, the peer plan (wg syncconf's rules plus purge
/// accounting) and pool allocation.
struct WireGuardPlanTests {
    func key(_ byte: UInt8) -> WireGuardKey { WireGuardKey(bytes: [UInt8](repeating: byte, count: 32))! }

    func peer(_ name: String, _ byte: UInt8, _ ips: [String], keepalive: Int = 0) -> DesiredPeer {
        DesiredPeer(
            name: name, publicKey: key(byte), presharedKey: nil, endpoint: nil, persistentKeepalive: keepalive,
            allowedIPs: ips.map { try! IPNetwork.parse($0) })
    }

    @Test func keysConvertBetweenBase64AndHexAndDerivePublicKeys() throws {
        let generated = WireGuardKey.generatePrivate()
        #expect(WireGuardKey(base64: generated.base64) == generated)
        #expect(WireGuardKey(hex: generated.hex) == generated)
        #expect(generated.publicKey != generated)
        // RFC 7748's test vector (Alice): the public key of a known private key.
        let alice = WireGuardKey(hex: "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")!
        #expect(alice.publicKey.hex == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        #expect(WireGuardKey(base64: "short") == nil)
        #expect(WireGuardKey(hex: "zz" + String(repeating: "0", count: 62)) == nil)
    }

    @Test func parsesTheUAPIAnswer() throws {
        let text = """
            private_key=\(key(1).hex)
            listen_port=51820
            fwmark=0
            public_key=\(key(2).hex)
            preshared_key=\(String(repeating: "0", count: 64))
            protocol_version=1
            endpoint=10.0.0.2:40000
            last_handshake_time_sec=1700000000
            last_handshake_time_nsec=500000000
            tx_bytes=100
            rx_bytes=200
            persistent_keepalive_interval=25
            allowed_ip=10.8.0.2/32
            allowed_ip=fd08::2/128
            public_key=\(key(3).hex)
            allowed_ip=10.8.0.3/32
            errno=0
            """
        let device = try UAPI.parseGet(text)
        #expect(device.privateKey == key(1))
        #expect(device.listenPort == 51820)
        #expect(device.peers.count == 2)
        let first = device.peers[0]
        #expect(first.publicKey == key(2) && first.presharedKey == nil && first.endpoint == "10.0.0.2:40000")
        #expect(first.lastHandshake == 1_700_000_000.5 && first.transmitBytes == 100 && first.receiveBytes == 200)
        #expect(first.allowedIPs.map(\.description) == ["10.8.0.2", "fd08::2"])
        #expect(first.persistentKeepalive == 25)
        #expect(device.peers[1].allowedIPs.map(\.description) == ["10.8.0.3"])
        #expect(throws: UAPI.ProtocolError.self) { try UAPI.parseGet("errno=22\n") }
        #expect(throws: UAPI.ProtocolError.self) { try UAPI.parseGet("garbage\n") }
    }

    @Test func planSetsOnlyWhatDiffers() {
        let actual = DeviceState(
            privateKey: key(1), listenPort: 51820, fwmark: 0,
            peers: [
                PeerState(publicKey: key(2), allowedIPs: [try! IPNetwork.parse("10.8.0.2")], receiveBytes: 5),
                PeerState(publicKey: key(3), allowedIPs: [try! IPNetwork.parse("10.8.0.3")]),
                PeerState(publicKey: key(4), allowedIPs: [try! IPNetwork.parse("10.8.0.4")]),
                PeerState(publicKey: key(9), allowedIPs: [try! IPNetwork.parse("10.8.0.9")]),
            ])
        let desired = DesiredDevice(
            privateKey: key(1), listenPort: 51820, fwmark: 0,
            peers: [
                peer("unchanged", 2, ["10.8.0.2"]), peer("keepalive", 3, ["10.8.0.3"], keepalive: 25), peer("new", 5, ["10.8.0.5"]),
            ])
        let plan = PeerPlan.make(desired: desired, actual: actual, known: [key(4)])
        #expect(plan.setPrivateKey == nil && plan.setListenPort == nil && plan.setFwmark == nil)
        #expect(plan.add.map(\.name) == ["new"])
        #expect(plan.update.map(\.name) == ["keepalive"])
        #expect(plan.remove == [key(4)], "configured before, intended")
        #expect(plan.purge == [key(9)], "never configured: a purge")
        let transactions = plan.uapiTransactions(purging: true)
        #expect(transactions.count == 1)
        let text = transactions[0]
        #expect(!text.contains(key(2).hex), "the unchanged peer is not touched")
        #expect(text.contains("public_key=\(key(9).hex)\nremove=true"))
        #expect(text.contains("public_key=\(key(3).hex)\nupdate_only=true"))
        #expect(text.hasPrefix("set=1\n") && text.hasSuffix("\n\n"))
        #expect(!plan.uapiTransactions(purging: false)[0].contains(key(9).hex))
        #expect(PeerPlan.make(desired: desired, actual: actual, known: [key(4)]) == plan)
    }

    @Test func largePeerSetsGoInChunks() {
        let desired = DesiredDevice(
            privateKey: key(1), listenPort: 51820, fwmark: 0,
            peers: (0..<1200).map { index in
                var bytes = [UInt8](repeating: 7, count: 32)
                bytes[0] = UInt8(index & 0xFF)
                bytes[1] = UInt8(index >> 8)
                return DesiredPeer(
                    name: "p\(index)", publicKey: WireGuardKey(bytes: bytes)!, presharedKey: nil, endpoint: nil, persistentKeepalive: 0,
                    allowedIPs: [])
            })
        let transactions = PeerPlan.make(desired: desired, actual: DeviceState(), known: []).uapiTransactions(purging: true, chunk: 500)
        #expect(transactions.count == 3)
        #expect(transactions[0].contains("private_key=") && !transactions[1].contains("private_key="))
        #expect(transactions.map { $0.components(separatedBy: "public_key=").count - 1 } == [500, 500, 200])
    }

    @Test func poolAddressesAreStableAndNeverShared() throws {
        let pool = [try IPNetwork.parse("10.8.0.0/29"), try IPNetwork.parse("fd08::/64")]
        let interface = [try InterfaceAddress.parse("10.8.0.1/29")]
        func peers(_ names: [String]) -> [WireGuardConfig.Peer] {
            names.map { .init(name: $0, publicKey: nil, presharedKeyFile: nil, allowedIPs: [], endpoints: [], persistentKeepalive: 0) }
        }
        var state = WireGuardState(interface: "wg0")
        let first = try state.allocate(peers: peers(["a", "b"]), pool: pool, interfaceAddresses: interface)
        #expect(first["a"]?.map(\.description) == ["10.8.0.2", "fd08::1"])
        #expect(first["b"]?.map(\.description) == ["10.8.0.3", "fd08::2"])
        // a leaves, c comes: b keeps its addresses, c takes the lowest free one (a's).
        let second = try state.allocate(peers: peers(["b", "c"]), pool: pool, interfaceAddresses: interface)
        #expect(second["b"] == first["b"])
        #expect(second["c"]?.map(\.description) == ["10.8.0.2", "fd08::1"])
        // A /29 holds .2-.6 for peers (.0 network, .1 the interface, .7 broadcast): the sixth does not fit.
        #expect(throws: WireGuardState.AllocationError.self) {
            _ = try state.allocate(peers: peers(["b", "c", "d", "e", "f", "g"]), pool: pool, interfaceAddresses: interface)
        }
    }

    @Test func usageAccumulatesAcrossCounterResetsAndPeriods() throws {
        func peer(_ name: String, limit: UInt64?, period: WireGuardConfig.Quota.Period = .day) -> WireGuardConfig.Peer {
            .init(
                name: name, publicKey: nil, presharedKeyFile: nil, allowedIPs: [], endpoints: [], persistentKeepalive: 0,
                quota: limit.map { .init(limit: $0, period: period) })
        }
        let alice = peer("alice", limit: 1000)
        var state = WireGuardState(interface: "wg0")
        let monday = Date(timeIntervalSince1970: 1_764_547_200)  // 2025-12-01 00:00 UTC, a Monday
        state.rollPeriods([alice], now: monday.addingTimeInterval(3600))
        func device(rx: UInt64, tx: UInt64) -> DeviceState {
            DeviceState(peers: [PeerState(publicKey: key(2), receiveBytes: rx, transmitBytes: tx)])
        }
        state.account(device(rx: 300, tx: 100), names: [key(2): "alice"])
        #expect(state.usage["alice"]?.used == 400 && !state.isOverQuota(alice))
        state.account(device(rx: 700, tx: 300), names: [key(2): "alice"])
        #expect(state.usage["alice"]?.used == 1000 && state.isOverQuota(alice))
        // Off the device (disabled): its counters restart from zero when it is back.
        state.account(DeviceState(), names: [key(2): "alice"])
        state.account(device(rx: 50, tx: 0), names: [key(2): "alice"])
        #expect(state.usage["alice"]?.used == 1050)
        // The same day: nothing resets; the next day: a new period.
        state.rollPeriods([alice], now: monday.addingTimeInterval(20 * 3600))
        #expect(state.usage["alice"]?.used == 1050)
        state.rollPeriods([alice], now: monday.addingTimeInterval(25 * 3600))
        #expect(state.usage["alice"]?.used == 0 && !state.isOverQuota(alice))
        // Periods start at UTC midnight, on Mondays, on the first of the month.
        let wednesday = monday.addingTimeInterval(2 * 86400 + 5000)
        #expect(WireGuardState.periodStart(.week, containing: wednesday) == monday)
        #expect(WireGuardState.periodStart(.month, containing: wednesday) == monday)
        #expect(WireGuardState.periodStart(.day, containing: wednesday) == monday.addingTimeInterval(2 * 86400))
        // A peer no longer configured takes its usage along.
        state.rollPeriods([peer("bob", limit: nil)], now: wednesday)
        #expect(state.usage["alice"] == nil && state.usage["bob"]?.used == 0)
    }

    @Test func failoverMovesOnAfterSilenceAndTriesThePreferredAgain() {
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        func at(_ seconds: Double) -> Date { t0.addingTimeInterval(seconds) }
        var failover = EndpointFailover(count: 2, failoverAfter: 10, now: t0)
        #expect(failover.observe(handshake: at(1), receiveBytes: 100, now: at(2)) == .stay)
        #expect(failover.observe(handshake: at(1), receiveBytes: 100, now: at(9)) == .stay, "silent for 8 s only")
        #expect(failover.observe(handshake: at(1), receiveBytes: 100, now: at(12)) == .switchTo(1), "silent since 2 s")
        // Alive on the fallback: bytes keep coming.
        var now = 13.0
        var received: UInt64 = 10
        while now < 52 {
            #expect(failover.observe(handshake: at(13), receiveBytes: received, now: at(now)) == .stay)
            now += 3
            received += 100
        }
        // Four failover_after on the fallback: the preferred endpoint is tried again...
        #expect(failover.observe(handshake: at(13), receiveBytes: received, now: at(52)) == .switchTo(0))
        // ...and left again when it stays silent.
        #expect(failover.observe(handshake: nil, receiveBytes: 0, now: at(58)) == .stay)
        #expect(failover.observe(handshake: nil, receiveBytes: 0, now: at(62)) == .switchTo(1))
        // One endpoint: nothing to switch to.
        var single = EndpointFailover(count: 1, failoverAfter: 10, now: t0)
        #expect(single.observe(handshake: nil, receiveBytes: nil, now: at(100)) == .stay)
    }

    @Test func configurationErrorsNameTheirPlace() {
        let loader = ConfigLoader(registry: BuiltinStages.registry)
        func errors(_ stage: String) -> [String] {
            do {
                _ = try loader.loadPipelines(yaml: "pipelines:\n  vpn:\n    stages:\n      - type: wireguard\n" + stage, name: "t.yaml")
                Issue.record("expected errors")
                return []
            } catch {
                return error.diagnostics.map(\.description)
            }
        }
        let missingPool = errors("        interface: wg0\n        peers:\n          - name: alice\n")
        #expect(missingPool.contains { $0.hasPrefix("t.yaml:7:11") && $0.contains("peers: peers without") }, "\(missingPool)")
        let badKey = errors("        interface: wg0\n        peers:\n          - {name: bob, public_key: nope, allowed_ips: [10.8.0.2/32]}\n")
        #expect(badKey.contains { $0.contains("public_key") && $0.contains("not a WireGuard key") }, "\(badKey)")
        let twice = errors("        interface: wg0\n        pool: [10.8.0.0/24]\n        peers:\n          - name: a\n          - name: a\n")
        #expect(twice.contains { $0.contains("listed twice") }, "\(twice)")
        // Host names are fine (resolved at every converge); an endpoint without a port is not.
        let noPort = errors("        interface: wg0\n        peers:\n          - {name: c, public_key: \(key(5).base64), allowed_ips: [10.8.0.3/32], endpoints: [vpn.example.com]}\n")
        #expect(noPort.contains { $0.contains("endpoints") }, "\(noPort)")
        let bothKeys = errors("        interface: wg0\n        private_key_file: /etc/weir/wg.key\n        private_key: \(key(7).base64)\n")
        #expect(bothKeys.contains { $0.contains("not both") }, "\(bothKeys)")
        let badInterface = errors("        interface: wg0/evil\n")
        #expect(badInterface.contains { $0.contains("not an interface name") }, "\(badInterface)")
        let badQuota = errors("        interface: wg0\n        peers:\n          - {name: d, public_key: \(key(6).base64), allowed_ips: [10.8.0.4/32], quota: {limit: lots}}\n")
        #expect(badQuota.contains { $0.contains("quota.limit") || $0.contains("not a positive size") }, "\(badQuota)")
    }
}
