import Foundation
import Testing
import WeirCore
import WeirStages
@testable import WeirCoordinator

/// What a VPN server renders into, checked by the agent's own loader, without I/O.
@Suite struct VPNRenderingTests {
    static let server = VPNServer(
        name: "office", agent: "gw1", selector: nil, interface: "wg0", listenPort: 51820, endpoint: "vpn.example.com:51820",
        addresses: ["10.8.0.1/24"], pool: ["10.8.0.0/24", "fd08::/64"], dns: ["10.8.0.1"], clientAllowedIPs: ["0.0.0.0/0", "::/0"], mtu: nil,
        masqueradeInterface: "eth0", privateKey: "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=", createdAt: 0)

    static func device(_ user: String, _ name: String, _ addresses: [String]) -> VPNDevice {
        VPNDevice(user: user, name: name, server: "office", addresses: addresses, publicKey: "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=", privateKey: nil, createdAt: 0)
    }

    static func load(_ document: String) throws -> [PipelineSpec] {
        try ConfigLoader(registry: BuiltinStages.registry).loadPipelines(yaml: document, name: "pipelines/vpn.office.yaml", listFiles: [])
    }

    @Test("users' devices become peers with their plan's quota, profiles other than full, masquerade of the IPv4 pool and the plans' rates; disabled users' devices are left out; the agent's loader takes it")
    func rendersWhatAgentsLoad() throws {
        let rendering = VPNRendering(
            users: [
                VPNUser(name: "alice@example.com", plan: "basic", profile: "internet_only", disabled: false, createdAt: 0),
                VPNUser(name: "bob", plan: nil, profile: "full", disabled: false, createdAt: 0),
                VPNUser(name: "mallory", plan: "basic", profile: "full", disabled: true, createdAt: 0),
            ],
            plans: [VPNPlan(name: "basic", rate: "20mbit", ceil: "40mbit", quota: "50GiB", period: "week", createdAt: 0)])
        let devices = [
            Self.device("alice@example.com", "phone", ["10.8.0.2", "fd08::2"]), Self.device("bob", "laptop", ["10.8.0.3", "fd08::3"]),
            Self.device("mallory", "pc", ["10.8.0.4", "fd08::4"]), Self.device("nobody", "ghost", ["10.8.0.5"]),
        ]
        let document = rendering.document(Self.server, devices: devices)
        let config = try Self.load(document)
        let stages = try #require(config.first { $0.id == "vpn-office" }).stages
        #expect(stages.map(\.type) == ["wireguard", "enforce.nftables", "shape.tc"])
        #expect(document.contains("\"alice@example.com.phone\"") && document.contains("\"bob.laptop\""))
        #expect(!document.contains("mallory") && !document.contains("ghost"))
        #expect(document.contains(#"quota: {limit: "50GiB", period: "week"}"#))
        #expect(document.contains(#"{peer: "alice@example.com.phone", profile: "internet_only"}"#) && !document.contains(#"profile: "full""#))
        #expect(document.contains(#"{source: "10.8.0.0/24", out_interface: "eth0"}"#) && !document.contains(#"source: "fd08"#))
        // One class for both of a device's addresses, named by its peer.
        #expect(document.contains(#"{name: "alice@example.com.phone", clients: ["10.8.0.2", "fd08::2"], rate: "20mbit", ceil: "40mbit"}"#))

        // Nobody left: only the interface, which the loader still takes.
        let empty = rendering.document(Self.server, devices: [])
        #expect(try Self.load(empty).first?.stages.map(\.type) == ["wireguard", "enforce.nftables"])
    }

    @Test("what operators typed cannot change the document's structure: values are quoted")
    func hostileValuesStayValues() throws {
        var server = Self.server
        server.endpoint = "x\"\n  injected: true\n#"
        let document = VPNRendering(users: [], plans: []).document(server, devices: [])
        #expect(!document.contains("\n  injected: true"))
        #expect(throws: (any Error).self) { try Self.load(document) }  // refused as an endpoint, not obeyed as a key
    }

    @Test("the client file: the device's key and addresses, the server's public key, DNS and what to route")
    func clientFile() throws {
        var device = Self.device("bob", "laptop", ["10.8.0.3", "fd08::3"])
        device.privateKey = "kEtRmvYvMDvYT9ShO8a56JE1P4B8mNuNoJ7Ny6c6n1M="
        let text = try #require(VPNRendering.clientFile(device, server: Self.server)).text
        #expect(text == """
            [Interface]
            PrivateKey = kEtRmvYvMDvYT9ShO8a56JE1P4B8mNuNoJ7Ny6c6n1M=
            Address = 10.8.0.3/32, fd08::3/128
            DNS = 10.8.0.1

            [Peer]
            PublicKey = \(Self.server.publicKey)
            Endpoint = vpn.example.com:51820
            AllowedIPs = 0.0.0.0/0, ::/0
            PersistentKeepalive = 25

            """)
    }
}
