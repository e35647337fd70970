import Foundation
import Testing

/// The coordinator's VPN resources end to end: a coordinator and a server agent in one namespace, a plain
/// wireguard-go client in the other configured only from what the API hands an admin.
@Suite("VPN users and devices through the coordinator", .serialized, .enabled(if: wireguardTestsUnavailable == nil, Comment(rawValue: wireguardTestsUnavailable ?? "")))
struct VPNCoordinatorTests {
    struct Setup {
        let net: NamespacePair
        let coordinator: CoordinatorProcess
        let agent: WeirProcess
        let interface: String
        let tag: String

        init() throws {
            net = try NamespacePair()
            tag = namespaceTag("v")
            interface = "wgs\(tag)"
            coordinator = try CoordinatorProcess(pki: try TestPKI(), netns: net.agent)
            try coordinator.start()
            let token = try coordinator.enrollmentToken()
            agent = try WeirProcess(
                pipelines: "pipelines: {}", extra: try coordinator.agentSection(token: token, labels: ["role": "vpn"], agent: "vpn-gw"),
                netns: net.agent, id: "vpn-gw")
            try agent.start()
        }

        func stop() {
            agent.stop()
            coordinator.stop()
        }

        /// The server's device: public key → allowed IPs.
        func peers() -> [String: String] {
            ((try? WireGuardTests.dump(net, interface)) ?? [:]).mapValues(\.ips)
        }

        func inSync() -> Bool { (try? coordinator.agent("vpn-gw"))??["status"] as? String == "in_sync" }

        /// An API GET written to a file (binary bodies): the HTTP status.
        func download(_ path: String, token: String, to file: String) throws -> Int {
            let (status, output) = try command(
                ["ip", "netns", "exec", net.agent, "curl", "-s", "--max-time", "10", "--cacert", coordinator.pki.caPath, "-o", file, "-w", "%{http_code}",
                 "-H", "Authorization: Bearer \(token)", coordinator.url + path])
            guard status == 0, let code = Int(output.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw CommandFailed(command: "curl \(path)", status: status, output: output)
            }
            return code
        }
    }

    @Test("A user's device created through the API: the server agent ACKs a bundle with its peer, the downloaded configuration (and its QR code) works with wireguard-go, usage comes back in heartbeats, disabling the user removes the peer")
    func userAndDeviceEndToEnd() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let (net, coordinator) = (setup.net, setup.coordinator)

        try coordinator.admin("PUT", "/api/v1/vpn/plans/basic", json: ["quota": "1GiB", "period": "month"])
        let server = try #require(try coordinator.admin("PUT", "/api/v1/vpn/servers/office", json: [
            "agent": "vpn-gw", "interface": setup.interface, "endpoint": "\(net.agentIPv4):51820", "addresses": ["10.88.0.1/24"],
            "pool": ["10.88.0.0/24"], "dns": ["10.88.0.1"],
        ]) as? [String: Any])
        #expect(server["private_key"] == nil)
        let serverKey = try #require(server["public_key"] as? String)
        try coordinator.admin("PUT", "/api/v1/vpn/users/alice", json: ["plan": "basic"])
        try coordinator.admin("PUT", "/api/v1/vpn/users/bob", json: [:])
        let phone = try #require(try coordinator.admin("POST", "/api/v1/vpn/users/alice/devices", json: ["name": "phone", "server": "office"]) as? [String: Any])
        let laptop = try #require(try coordinator.admin("POST", "/api/v1/vpn/users/bob/devices", json: ["name": "laptop", "server": "office"]) as? [String: Any])
        // Lowest free addresses, never the server's own, never shared.
        #expect(phone["addresses"] as? [String] == ["10.88.0.2"])
        #expect(laptop["addresses"] as? [String] == ["10.88.0.3"])
        #expect(phone["private_key"] == nil && phone["has_private_key"] as? Bool == true)
        let phoneKey = try #require(phone["public_key"] as? String)
        let laptopKey = try #require(laptop["public_key"] as? String)
        // A second device of one name is refused.
        #expect(try coordinator.request("POST", "/api/v1/vpn/users/alice/devices", body: #"{"name":"phone","server":"office"}"#, token: coordinator.adminToken).0 == 409)

        // The agent gets a bundle with both peers and ACKs it.
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers() == [phoneKey: "10.88.0.2/32", laptopKey: "10.88.0.3/32"] },
                "peers: \(setup.peers()); agent: \(String(describing: try? coordinator.agent("vpn-gw")))\n\(setup.agent.log)")

        // Only admins read configurations: they hold private keys.
        let config = try coordinator.request("GET", "/api/v1/vpn/users/alice/devices/phone/config", token: coordinator.adminToken)
        #expect(config.0 == 200)
        #expect(config.1.contains("PublicKey = \(serverKey)") && config.1.contains("Endpoint = \(net.agentIPv4):51820"))
        #expect(config.1.contains("Address = 10.88.0.2/32") && config.1.contains("DNS = 10.88.0.1"))
        for role in ["operator", "viewer"] {
            let token = try #require((try coordinator.admin("POST", "/api/v1/tokens", json: ["name": role, "role": role]) as? [String: Any])?["token"] as? String)
            let refused = try coordinator.request("GET", "/api/v1/vpn/users/alice/devices/phone/config", token: token)
            #expect(refused.0 == 403 && !refused.1.contains("PrivateKey"), "\(role): \(refused)")
            #expect(try setup.download("/api/v1/vpn/users/alice/devices/phone/qr.png", token: token, to: "/dev/null") == 403)
            // Device listings never show a private key.
            #expect(!(try coordinator.request("GET", "/api/v1/vpn/users/alice", token: token).1.contains("PrivateKey")))
        }
        let privateLine = try #require(config.1.split(separator: "\n").first { $0.hasPrefix("PrivateKey = ") })
        #expect(!(try coordinator.request("GET", "/api/v1/vpn/users", token: coordinator.adminToken).1.contains(String(privateLine.dropFirst("PrivateKey = ".count)))))

        // The QR codes decode (zbarimg, a real reader) to the configuration itself.
        let png = coordinator.directory.appendingPathComponent("phone.png").path
        #expect(try setup.download("/api/v1/vpn/users/alice/devices/phone/qr.png", token: coordinator.adminToken, to: png) == 200)
        if which("zbarimg") != nil {
            // (zbarimg complains on stderr when there is no D-Bus; only its stdout is the code.)
            let decoded = try command(["sh", "-c", "zbarimg --raw -q \"$0\" 2>/dev/null", png])
            #expect(decoded.output.trimmingCharacters(in: .newlines) == config.1.trimmingCharacters(in: .newlines), "\(decoded)")
        }
        let svg = try coordinator.request("GET", "/api/v1/vpn/users/alice/devices/phone/qr.svg", token: coordinator.adminToken)
        #expect(svg.0 == 200 && svg.1.hasPrefix("<svg"))

        // A plain wireguard-go client from the downloaded file: UDP and TCP through the tunnel.
        let echo = try WireGuardTests.echo(net)
        defer { echo.stopHelper() }
        let client = try WireGuardTests.Client(
            namespace: net.peer, configuration: config.1, directory: coordinator.directory, interface: "wcp\(setup.tag)",
            routes: [["route", "add", "10.88.0.0/24", "dev", "wcp\(setup.tag)"]])
        #expect(client.address == "10.88.0.2")
        #expect(eventually(timeout: 10) { client.ping() })
        let tcp = try net.background(net.agent, TrafficScripts.tcpReadThenReply, ["4", "10.88.0.1", "7300", "1000"])
        defer { tcp.stopHelper() }
        let sent = 300_000
        #expect(try net.python(net.peer, TrafficScripts.tcpSendThenRead, ["4", "10.88.0.1", "7300", "\(sent)"]).contains("1000"))

        // Usage per device, from the agent's heartbeats, in the user's view.
        var usage: [String: Any] = [:]
        #expect(eventually(timeout: 10) {
            let user = (try? coordinator.admin("GET", "/api/v1/vpn/users/alice")) as? [String: Any]
            let device = (user?["devices"] as? [[String: Any]])?.first
            usage = ((device?["usage"] as? [String: Any])?["vpn-gw"] as? [String: Any]) ?? [:]
            return (usage["receive_bytes"] as? Double ?? 0) >= Double(sent) && (user?["receive_bytes"] as? Double ?? 0) >= Double(sent)
        }, "usage: \(usage)")
        #expect((usage["last_handshake"] as? Double ?? 0) > 1_700_000_000)
        #expect(usage["quota_bytes"] as? Double == 1_073_741_824)

        // Disabled: the next bundle has no peer for alice, and her client is cut off. Enabled: back, same key.
        try coordinator.admin("POST", "/api/v1/vpn/users/alice/disable")
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers() == [laptopKey: "10.88.0.3/32"] }, "\(setup.peers())")
        #expect(!client.ping())
        try coordinator.admin("POST", "/api/v1/vpn/users/alice/enable")
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers()[phoneKey] == "10.88.0.2/32" })
        #expect(eventually(timeout: 25) { client.ping() }, "the client recovers by itself (a new handshake)")

        // A deleted device gives its address back; the next device gets it; the server cannot go while it has devices.
        #expect(try coordinator.request("DELETE", "/api/v1/vpn/servers/office", token: coordinator.adminToken).0 == 409)
        try coordinator.admin("DELETE", "/api/v1/vpn/users/bob/devices/laptop")
        let tablet = try #require(try coordinator.admin("POST", "/api/v1/vpn/users/bob/devices", json: ["name": "tablet", "server": "office"]) as? [String: Any])
        #expect(tablet["addresses"] as? [String] == ["10.88.0.3"])
        // A device that brought its own key: the coordinator has no configuration to give.
        let own = try command(["wg", "genkey"]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        let ownPublic = try command(["sh", "-c", "echo \(own) | wg pubkey"]).output.trimmingCharacters(in: .whitespacesAndNewlines)
        let brought = try #require(try coordinator.admin("POST", "/api/v1/vpn/users/bob/devices", json: ["name": "router", "server": "office", "public_key": ownPublic]) as? [String: Any])
        #expect(brought["has_private_key"] as? Bool == false)
        #expect(try coordinator.request("GET", "/api/v1/vpn/users/bob/devices/router/config", token: coordinator.adminToken).0 == 409)
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers()[ownPublic] == "10.88.0.4/32" })

        // Deleting the user removes every device's peer; deleting the server then removes the interface.
        try coordinator.admin("DELETE", "/api/v1/vpn/users/bob")
        try coordinator.admin("DELETE", "/api/v1/vpn/users/alice")
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers().isEmpty })
        try coordinator.admin("DELETE", "/api/v1/vpn/servers/office")
        #expect(eventually(timeout: 15) { setup.inSync() && !((try? net.inside(net.agent, ["ip", "link", "show"])) ?? "").contains(setup.interface) })
    }

    /// TCP payload per byte shaped on a WireGuard interface (no link header; MTU 1420, TCP timestamps).
    static func tunnelGoodput(_ mbit: Double) -> Double { mbit * 1368.0 / 1420.0 }

    @Test("A plan's rate caps its user's device within 10 % both ways (shape.tc on the server's interface, rendered by the coordinator); changing the plan changes the cap")
    func planRateShapesDevices() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let (net, coordinator) = (setup.net, setup.coordinator)
        try coordinator.admin("PUT", "/api/v1/vpn/plans/slow", json: ["rate": "8mbit"])
        try coordinator.admin("PUT", "/api/v1/vpn/servers/office", json: [
            "agent": "vpn-gw", "interface": setup.interface, "endpoint": "\(net.agentIPv4):51820", "addresses": ["10.88.0.1/24"], "pool": ["10.88.0.0/24"],
        ])
        try coordinator.admin("PUT", "/api/v1/vpn/users/carol", json: ["plan": "slow"])
        let device = try #require(try coordinator.admin("POST", "/api/v1/vpn/users/carol/devices", json: ["name": "laptop", "server": "office"]) as? [String: Any])
        let key = try #require(device["public_key"] as? String)
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers()[key] != nil }, "\(setup.agent.log)")
        let config = try coordinator.request("GET", "/api/v1/vpn/users/carol/devices/laptop/config", token: coordinator.adminToken)
        let client = try WireGuardTests.Client(
            namespace: net.peer, configuration: config.1, directory: coordinator.directory, interface: "wcr\(setup.tag)",
            routes: [["route", "add", "10.88.0.0/24", "dev", "wcr\(setup.tag)"]])
        #expect(client.address == "10.88.0.2")
        // The device's class is there both ways before its first packet: a class made on demand came only after
        // the first packets went out unshaped, and the burst they let through inflated the first reading.
        for device in [setup.interface, "wi-" + setup.interface] {
            #expect(((try? net.inside(net.agent, ["tc", "class", "show", "dev", device])) ?? "").contains("rate 8Mbit"), "\(device)")
        }
        let iperf = try Iperf(net, ns: net.agent, address: "10.88.0.1", port: 5201)
        defer { iperf.stop() }

        func expectCap(_ mbit: Double, _ what: String) throws {
            for (direction, measure) in [("upload", { try iperf.send(from: net.peer, seconds: 4) }), ("download", { try iperf.receive(in: net.peer, seconds: 4) })] {
                var readings: [Double] = []
                for _ in 0..<3 {
                    let reading = try measure()
                    readings.append(reading)
                    #expect(reading <= Self.tunnelGoodput(mbit) * 1.1, "\(what) \(direction): \(reading) Mbit/s exceeds \(mbit)mbit")
                    if abs(reading - Self.tunnelGoodput(mbit)) <= Self.tunnelGoodput(mbit) * 0.1 { break }
                    if readings.count == 3 { Issue.record("\(what) \(direction): \(readings) Mbit/s, expected \(Self.tunnelGoodput(mbit)) ± 10%") }
                }
            }
        }
        try expectCap(8, "plan slow (8mbit)")
        try coordinator.admin("PUT", "/api/v1/vpn/plans/slow", json: ["rate": "16mbit"])
        #expect(eventually(timeout: 15) { setup.inSync() && ((try? net.inside(net.agent, ["tc", "class", "show", "dev", setup.interface])) ?? "").contains("rate 16Mbit") })
        try expectCap(16, "plan slow changed to 16mbit")
    }

    @Test("the console's VPN pages: a plan, a server, a user and a device made in forms; the downloaded configuration works with wireguard-go; usage and handshake on the user page; only admins read configurations (audited); disabling cuts the device off")
    func consolePages() throws {
        let setup = try Setup()
        defer { setup.stop() }
        let (net, coordinator) = (setup.net, setup.coordinator)
        let admin = ConsoleClient(coordinator)
        try admin.signIn("admin", coordinator.consoleAdminPassword)
        let csrf = try admin.csrfToken()
        #expect(try admin.get("/vpn").body.contains("No VPN servers yet."))

        // Refused forms say why; nothing is made.
        let badPool = try admin.post("/vpn/servers/create", [
            "name": "office", "agent": "vpn-gw", "endpoint": "\(net.agentIPv4):51820", "addresses": "10.88.0.1/24", "pool": "10.88.0.300/24",
        ], csrf: csrf)
        #expect(badPool.status == 422 && badPool.body.contains("pool: &quot;10.88.0.300/24&quot; is not a network"), "\(badPool.body)")
        let badPlan = try admin.post("/vpn/plans/create", ["name": "basic", "rate": "fast"], csrf: csrf)
        #expect(badPlan.status == 422 && badPlan.body.contains("rate:"), "\(badPlan.body)")

        #expect(try admin.post("/vpn/plans/create", ["name": "basic", "quota": "1GiB", "period": "month"], csrf: csrf).body.contains("Plan basic created."))
        let created = try admin.post("/vpn/servers/create", [
            "name": "office", "agent": "vpn-gw", "interface": setup.interface, "endpoint": "\(net.agentIPv4):51820", "addresses": "10.88.0.1/24",
            "pool": "10.88.0.0/24", "dns": "10.88.0.1",
        ], csrf: csrf)
        #expect(created.status == 200 && created.body.contains("VPN server office created"), "\(created.body)")
        let user = try admin.post("/vpn/users/create", ["name": "dana@example.com", "plan": "basic", "profile": "full"], csrf: csrf)
        #expect(user.status == 303 && user.headers["location"] == "/vpn/users/dana@example.com", "\(user)")
        let device = try admin.post("/vpn/users/dana@example.com/devices/create", ["device": "phone", "server": "office"], csrf: csrf)
        #expect(device.status == 200 && device.body.contains("Device phone added with 10.88.0.2."), "\(device.body)")
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers().values.contains("10.88.0.2/32") }, "\(setup.peers())")
        #expect(eventually(timeout: 5) { (try? admin.get("/vpn").body)?.contains("1 agent: 1 applied · 0 pending · 0 refused") == true })

        // The configuration as an admin downloads it: a file, and the same text as the API gives; the QR code.
        let file = try admin.get("/vpn/users/dana@example.com/devices/phone/config")
        #expect(file.status == 200 && file.headers["content-disposition"] == "attachment; filename=\"phone.conf\"" && file.headers["cache-control"] == "no-store")
        let api = try coordinator.request("GET", "/api/v1/vpn/users/dana@example.com/devices/phone/config", token: coordinator.adminToken)
        #expect(file.body == api.1 && file.body.contains("Address = 10.88.0.2/32"))
        let qr = try admin.get("/vpn/users/dana@example.com/devices/phone/qr.svg")
        #expect(qr.status == 200 && qr.headers["content-type"] == "image/svg+xml" && qr.body.hasPrefix("<svg"))
        // An operator manages users but does not read configurations.
        #expect(try coordinator.createConsoleAccount("vpn-op", role: "operator", password: "granite owl harbour 58 mist").status == 0)
        let op = ConsoleClient(coordinator)
        try op.signIn("vpn-op", "granite owl harbour 58 mist")
        let refused = try op.get("/vpn/users/dana@example.com/devices/phone/config")
        #expect(refused.status == 403 && !refused.body.contains("PrivateKey"))
        #expect(try op.get("/vpn/users/dana@example.com/devices/phone/qr.svg").status == 403)
        #expect(!(try op.get("/vpn/users/dana@example.com").body.contains("/config")), "no configuration link for operators")

        // A wireguard-go client from the downloaded file; its traffic and handshake on the user page.
        let echo = try WireGuardTests.echo(net)
        defer { echo.stopHelper() }
        let client = try WireGuardTests.Client(
            namespace: net.peer, configuration: file.body, directory: coordinator.directory, interface: "wcc\(setup.tag)",
            routes: [["route", "add", "10.88.0.0/24", "dev", "wcc\(setup.tag)"]])
        #expect(eventually(timeout: 10) { client.ping() })
        #expect(eventually(timeout: 10) {
            let page = (try? op.get("/vpn/users/dana@example.com").body) ?? ""
            return !page.contains("<td>never</td>") && page.contains(" s ago</td>") && page.contains("of 1.0 GiB")
        }, "\((try? op.get("/vpn/users/dana@example.com").body) ?? "")")

        // Disabled by the operator: the peer goes, the client is cut off; enabled again: back.
        #expect(try op.post("/vpn/users/dana@example.com/disable", csrf: try op.csrfToken()).body.contains("Disabled"))
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers().isEmpty })
        #expect(!client.ping())
        #expect(try op.post("/vpn/users/dana@example.com/enable", csrf: try op.csrfToken()).body.contains("Enabled."))
        #expect(eventually(timeout: 15) { setup.inSync() && setup.peers().count == 1 })
        // The server cannot go while it has devices; the user (with devices) can, then the server.
        let busy = try admin.post("/vpn/servers/office/delete", csrf: csrf)
        #expect(busy.status == 422 && busy.body.contains("has 1 devices"), "\(busy.body)")
        #expect(try admin.post("/vpn/users/dana@example.com/delete", csrf: csrf).status == 303)
        #expect(try admin.post("/vpn/servers/office/delete", csrf: csrf).body.contains("VPN server office deleted."))
        #expect(eventually(timeout: 15) { setup.inSync() && !((try? net.inside(net.agent, ["ip", "link", "show"])) ?? "").contains(setup.interface) })

        // (CSV quotes a detail with a comma.)
        let trail = try admin.get("/audit.csv").body.replacingOccurrences(of: "\"", with: "")
        for line in [
            "vpn.server.put office,ok,created: agent vpn-gw", "vpn.plan.put basic,ok,rate none",
            "vpn.user.create dana@example.com,ok,created: plan basic", "vpn.device.create dana@example.com,ok,server office, 10.88.0.2, key pair made by the coordinator",
            "vpn.device.config dana@example.com.phone,ok,configuration with the device's private key given out",
            "account:vpn-op", "read VPN client configurations (they hold private keys),refused", "vpn.user.disable dana@example.com,ok,plan basic, profile full, enabled → plan basic, profile full, disabled",
            "vpn.server.put office,failed,pool", "vpn.user.delete dana@example.com,ok,deleted with 1 device: phone",
        ] {
            #expect(trail.contains(line), "\(line)\n\(trail)")
        }
        #expect(!trail.contains("PrivateKey"))
    }
}
