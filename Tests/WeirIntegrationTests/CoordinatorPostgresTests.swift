import Foundation
import Testing

/// Two coordinator instances on one real PostgreSQL: stateless instances, changes announced with NOTIFY.
@Suite(
    "Coordinator (PostgreSQL, two instances)", .serialized,
    .enabled(if: which("openssl") != nil && which("curl") != nil, "needs openssl and curl installed"),
    .enabled(if: PostgresServer.available, "needs Debian's postgresql package (initdb, pg_ctl)"))
struct CoordinatorPostgresTests {
    @Test("VPN devices created at once through two instances never share an address (the database's key decides)")
    func vpnAddressesAcrossInstances() throws {
        let postgres = try PostgresServer()
        let pki = try TestPKI()
        let a = try CoordinatorProcess(pki: pki, database: postgres.url)
        try a.start()
        defer { a.stop() }
        let b = try CoordinatorProcess(pki: pki, database: postgres.url, settings: ["secrets_key_file: \(a.directory.path)/state/secrets.key"])
        try b.start()
        defer { b.stop() }
        let results = try VPNAllocation.createConcurrently([a, b], token: a.adminToken, count: 40)
        #expect(results.allSatisfy { $0.0 == 201 }, "\(results.filter { $0.0 != 201 })")
        #expect(Set(results.map(\.1)).count == 40, "duplicates: \(results.map(\.1).sorted())")
        // Keys generated on either instance open on the other (one secrets key).
        let config = try b.request("GET", "/api/v1/vpn/users/u/devices/d0/config", token: a.adminToken)
        #expect(config.0 == 200 && config.1.contains("PrivateKey = "), "\(config)")
    }

    @Test("a change made through instance B reaches an agent connected to instance A within a second")
    func changeThroughOtherInstance() throws {
        let postgres = try PostgresServer()
        let pki = try TestPKI()
        let a = try CoordinatorProcess(pki: pki, database: postgres.url)
        try a.start()
        defer { a.stop() }
        // Instances of one database share the key that seals generated secrets.
        let b = try CoordinatorProcess(
            pki: pki, database: postgres.url, settings: ["secrets_key_file: \(a.directory.path)/state/secrets.key"])
        try b.start()
        defer { b.stop() }
        // One database: the first instance made the admin token; the second finds tokens there and makes none.
        let adminToken = a.adminToken
        #expect(!adminToken.isEmpty && b.adminToken.isEmpty)
        let admin = { (instance: CoordinatorProcess, method: String, path: String, body: String?, type: String) throws -> (Int, String) in
            try instance.request(method, path, body: body, contentType: type, token: adminToken)
        }

        // Enrolled through a token made on B, connected to A.
        let (created, tokenBody) = try admin(b, "POST", "/api/v1/enrollment-tokens", #"{"labels":{"role":"edge"}}"#, "application/json")
        #expect(created == 201)
        let token = try #require((try JSONSerialization.jsonObject(with: Data(tokenBody.utf8)) as? [String: Any])?["token"] as? String)
        let agent = try WeirProcess(
            pipelines: "pipelines: {}", extra: try a.agentSection(token: token, labels: [:], agent: "pg-agent"), id: "pg-agent")
        try agent.start()
        defer { agent.stop() }
        let online = { (instance: CoordinatorProcess) -> Bool in
            let (_, text) = (try? admin(instance, "GET", "/api/v1/agents/pg-agent", nil, "application/json")) ?? (0, "")
            return text.contains("\"online\" : true") && text.contains("\"status\" : \"in_sync\"")
        }
        #expect(eventually(timeout: 10) { online(a) && online(b) }, "\(agent.log)\n\(a.log)")

        // Document and assignment through B; the agent is on A.
        let echo = try Backends.echo()
        let port = freePort()
        let document = CoordinatorTests.forward("via-b", port: port, to: echo.port)
        #expect(try admin(b, "PUT", "/api/v1/pipelines/via-b", document, "application/yaml").0 == 201)
        let changed = Date()
        #expect(try admin(b, "POST", "/api/v1/assignments", #"{"pipeline":"via-b","selector":"role=edge"}"#, "application/json").0 == 201)
        #expect(eventually(timeout: 1) { CoordinatorTests.echoes(port) }, "\(agent.log)\n\(a.log)")
        print("change through B to a running pipeline on the agent connected to A: \(String(format: "%.3f", Date().timeIntervalSince(changed))) s")
        #expect(eventually(timeout: 5) { online(a) && online(b) })

        // And back: a removal through A reaches it too (A's own change path).
        #expect(try admin(a, "DELETE", "/api/v1/pipelines/via-b", nil, "application/json").0 == 204)
        #expect(eventually(timeout: 2) { !CoordinatorTests.echoes(port) })

        // The agent's applied state is in the shared database, so B reports it as well.
        let (_, view) = try admin(b, "GET", "/api/v1/agents/pg-agent", nil, "application/json")
        #expect(view.contains("\"status\" : \"in_sync\""), "\(view)")
    }
}
