import Foundation
import Testing
import WeirCore
@testable import WeirCoordinator

@Suite struct CoordinatorConfigTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("the example configuration loads: SQLite under the state folder by default")
    func example() throws {
        let config = try CoordinatorConfig.load(path: Self.repository.appendingPathComponent("etc/weir/coordinator.yaml").path)
        #expect(config.database == .sqlite(path: "/var/lib/weir-coordinator/coordinator.db"))
        #expect(config.adminTokenFile == "/var/lib/weir-coordinator/admin.token")
        #expect(config.heartbeatInterval == .seconds(10) && config.offlineAfter == .seconds(30))
        #expect(config.maxRequestBody == 16 << 20)
    }

    @Test("errors name file, line, column and key")
    func errors() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("coordinator-\(UUID().uuidString).yaml").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try """
            coordinator:
              listen: 0.0.0.0:8443
              database: mysql://x
              heartbeat_interval: 10s
              offline_after: 5s
              tls: { certificate: /c.pem }
              colour: blue
              max_request_body: 16 MiB/s
            """.write(toFile: path, atomically: true, encoding: .utf8)
        #expect {
            _ = try CoordinatorConfig.load(path: path)
        } throws: { error in
            let text = "\(error)"
            return text.contains("\(path):3:13: coordinator.database: \"mysql://x\" is not a database")
                && text.contains("\(path):5:18: coordinator.offline_after: offline_after must be longer than heartbeat_interval")
                && text.contains("coordinator.tls: missing required key \"key\"")
                && text.contains("\(path):7:3: coordinator.colour: unknown key")
                && text.contains("\(path):8:21: coordinator.max_request_body: \"16 MiB/s\" has an unknown unit")
        }
        let postgres = path + ".pg"
        defer { try? FileManager.default.removeItem(atPath: postgres) }
        try "coordinator:\n  database: postgres://weir@db/weir\n  tls: { certificate: /c, key: /k }\n  max_request_body: 64KiB\n".write(toFile: postgres, atomically: true, encoding: .utf8)
        let loaded = try CoordinatorConfig.load(path: postgres)
        #expect(loaded.database == .postgres(url: "postgres://weir@db/weir") && loaded.maxRequestBody == 65536)
    }
}
