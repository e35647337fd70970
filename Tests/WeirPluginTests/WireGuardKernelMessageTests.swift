import CWeirNetlink
import Foundation
import Glibc
import Testing
import WeirCore
import WeirVPN

@testable import WeirTunnels

/// The kernel backend's netlink messages without the module (this project's CI kernel has none): a plan
/// becomes WG_CMD_SET_DEVICE messages (split to fit, peers never cut), and the WG_CMD_GET_DEVICE parser —
/// whose attributes are the same — reads back exactly what was meant.
struct WireGuardKernelMessageTests {
    func key(_ byte: UInt8) -> WireGuardKey { WireGuardKey(bytes: [UInt8](repeating: byte, count: 32))! }

    func peer(_ index: Int, endpoint: String? = nil, keepalive: Int = 0) -> DesiredPeer {
        DesiredPeer(
            name: "p\(index)", publicKey: WireGuardKey(bytes: [UInt8(index >> 8), UInt8(index & 0xFF)] + [UInt8](repeating: 7, count: 30))!,
            presharedKey: nil, endpoint: endpoint, persistentKeepalive: keepalive,
            allowedIPs: [try! IPNetwork.parse("10.9.\(index >> 8).\(index & 0xFF)/32"), try! IPNetwork.parse("fd09::\(String(index, radix: 16))/128")])
    }

    /// Every message of every change, encoded into `size`-byte buffers, decoded into one device.
    func roundTrip(_ changes: [KernelDevice.Change], size: Int) throws -> (DeviceState, messages: Int) {
        var device = weir_wg_device()
        defer { weir_wg_device_free(&device) }
        var messages = 0
        var buffer = [CChar](repeating: 0, count: size)
        for change in changes {
            try change.withDevice { c in
                var first = 0
                repeat {
                    var next = 0
                    let length = weir_wg_encode_set(&buffer, size, 0x1d, "wg0", c, first, &next)
                    guard length > 0 else { throw KernelDevice.DeviceError(description: "encode: \(length)") }
                    #expect(weir_wg_decode_device(buffer, Int(length), &device) == 0)
                    messages += 1
                    first = next
                } while first < c.pointee.peer_count
            }
        }
        return (KernelDevice.state(device), messages)
    }

    @Test("a plan's device settings, added, updated and removed peers survive encoding into split messages and decoding")
    func planRoundTrips() throws {
        var plan = PeerPlan()
        plan.setPrivateKey = key(1)
        plan.setListenPort = 51820
        plan.setFwmark = 0x51
        plan.add = (0..<300).map { peer($0, endpoint: $0 % 2 == 0 ? "203.0.113.\($0 % 250):51820" : "[2001:db8::\($0)]:4500", keepalive: 25) }
        var updated = peer(1000)
        updated.presharedKey = key(9)
        plan.update = [updated]
        plan.remove = [key(0xEE)]
        plan.purge = [key(0xEF)]

        let changes = KernelDevice.changes(plan, purging: true, chunk: 120)
        #expect(changes.count == 3)
        #expect(changes[0].privateKey == key(1) && changes[0].listenPort == 51820 && changes[0].fwmark == 0x51)
        #expect(changes[1].privateKey == nil && changes[1].listenPort == nil)
        // Removals first, flagged; updates replace allowed IPs and reset what the configuration dropped.
        #expect(changes[0].peers.prefix(2).map(\.flags) == [WEIR_WG_PEER_REMOVE, WEIR_WG_PEER_REMOVE])
        let update = try #require(changes[2].peers.last)
        #expect(update.flags == WEIR_WG_PEER_UPDATE_ONLY | WEIR_WG_PEER_REPLACE_ALLOWED_IPS && update.persistentKeepalive == 0)
        #expect(update.presharedKey == key(9).bytes)
        #expect(KernelDevice.changes(plan, purging: false).first?.peers.contains { $0.publicKey == key(0xEF) } == false)

        // 4 KiB buffers: many messages, none cutting a peer.
        let (state, messages) = try roundTrip(changes, size: 4096)
        #expect(messages > 10)
        #expect(state.privateKey == key(1) && state.listenPort == 51820 && state.fwmark == 0x51)
        let expected = [key(0xEE), key(0xEF)] + plan.add.map(\.publicKey) + [updated.publicKey]
        #expect(state.peers.map(\.publicKey) == expected)
        for (decoded, desired) in zip(state.peers.dropFirst(2), plan.add + plan.update) {
            #expect(decoded.allowedIPs == desired.allowedIPs)
            #expect(decoded.endpoint == desired.endpoint)
            #expect(decoded.persistentKeepalive == desired.persistentKeepalive)
        }
        #expect(state.peers.last?.presharedKey == key(9))
        #expect(state.peers.first?.allowedIPs == [] && state.peers.first?.endpoint == nil)
    }

    @Test("a dump's peer continued in the next message under the same key is one peer; a peer too large for any message is refused")
    func continuationAndOversize() throws {
        let a = KernelDevice.Change(peers: [.init(publicKey: key(3), allowedIPs: [try IPNetwork.parse("10.0.0.0/24")])])
        let b = KernelDevice.Change(peers: [.init(publicKey: key(3), allowedIPs: [try IPNetwork.parse("10.0.1.0/24")])])
        let (state, _) = try roundTrip([a, b], size: 4096)
        #expect(state.peers.count == 1 && state.peers[0].allowedIPs.map(\.description) == ["10.0.0.0/24", "10.0.1.0/24"])

        let huge = KernelDevice.Change(peers: [.init(publicKey: key(4), allowedIPs: (0..<400).map { try! IPNetwork.parse("10.1.\($0 / 256).\($0 % 256)/32") })])
        var buffer = [CChar](repeating: 0, count: 4096)
        var next = 0
        let length = huge.withDevice { weir_wg_encode_set(&buffer, 4096, 0x1d, "wg0", $0, 0, &next) }
        #expect(length == -EMSGSIZE)
    }

    @Test("endpoints as the device takes them")
    func endpoints() {
        #expect(KernelDevice.endpoint("203.0.113.5:51820").map { [Int($0.family), Int($0.port)] + $0.address.prefix(4).map(Int.init) } == [Int(AF_INET), 51820, 203, 0, 113, 5])
        #expect(KernelDevice.endpoint("[2001:db8::1]:4500")?.family == UInt8(AF_INET6))
        #expect(KernelDevice.endpoint("vpn.example.com:51820") == nil)
        #expect(KernelDevice.endpoint("203.0.113.5") == nil)
    }

    @Test("this kernel says whether it has the module; auto picks accordingly")
    func availability() throws {
        let available = weir_wg_available()
        #expect(available == 0 || available == 1)
        let device = try DeviceChoice.device(interface: "wgnone0", backend: .auto, createdBy: nil)
        #expect(device.backend == (available == 1 ? "kernel" : "userspace"))
        if available == 0 {
            #expect(throws: (any Error).self) { try DeviceChoice.device(interface: "wgnone0", backend: .kernel, createdBy: nil) }
        }
    }
}
