import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOPosix
import Testing
import WeirAgent
import WeirCore
import WeirStages

/// What the fake service stages did, in order.
final class ServiceLog: Sendable {
    private let entries = NIOLockedValueBox<[String]>([])
    func record(_ entry: String) { entries.withLockedValue { $0.append(entry) } }
    func take() -> [String] { entries.withLockedValue { entries in defer { entries = [] }; return entries } }
}

/// `test.service`: records start/stop/retire; `fail: true` makes start throw.
struct RecordingServiceConfig: StageConfig {
    static let type = "test.service"
    static let summary = "records its lifecycle"
    static let role = StageRole.service
    static let options: [OptionDoc] = []
    static let sample = ""
    nonisolated(unsafe) static var log = ServiceLog()
    /// What every `test.service` stage's reconcile reports.
    static let problems = NIOLockedValueBox<[String]>([])

    let name: String
    let fail: Bool

    static func decode(_ options: ConfigMapping) -> RecordingServiceConfig? {
        guard let name = options.required("name")?.string else { return nil }
        let fail = options.optional("fail", default: false) { $0.bool }
        return RecordingServiceConfig(name: name, fail: fail ?? false)
    }

    func makeStage(_ context: StageContext) -> any Stage { RecordingService(name: name, fail: fail, log: Self.log) }
}

final class RecordingService: ServiceStage {
    let name: String
    let fail: Bool
    let log: ServiceLog

    init(name: String, fail: Bool, log: ServiceLog) {
        self.name = name
        self.fail = fail
        self.log = log
    }

    struct Refused: Error {}

    func start() async throws {
        log.record("start \(name)")
        if fail { throw Refused() }
    }
    func stop() async { log.record("stop \(name)") }
    func retire() async { log.record("retire \(name)") }
    func reconcile() async -> ReconcileReport {
        ReconcileReport(problems: RecordingServiceConfig.problems.withLockedValue { $0 })
    }
}

/// How the supervisor moves service stages through reloads: unchanged ones carry on untouched, changed
/// ones stop before their successors start (never both at once), a failed reload restarts what it stopped,
/// and only stages that left the configuration are retired.
@Suite(.serialized) struct ServiceStageTests {
    let loader = ConfigLoader(registry: StageRegistry(BuiltinStages.registry.all + [RecordingServiceConfig.self]))
    let folder = FileManager.default.temporaryDirectory.appendingPathComponent("weir-service-\(UUID().uuidString)").path

    func config(_ pipelines: String) throws -> AgentConfig {
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let path = folder + "/weir.yaml"
        try pipelines.write(toFile: path, atomically: true, encoding: .utf8)
        return try loader.load(path: path)
    }

    func forward(service: String, target: String = "127.0.0.1:9", fail: Bool = false) -> String {
        """
        pipelines:
          p:
            stages:
              - type: test.service
                name: \(service)
                fail: \(fail)
              - type: listen.tcp
                address: 127.0.0.1:0
              - type: connect.tcp
                addresses: [\(target)]
        """
    }

    /// Retirement runs in the background after a reload commits.
    func eventually(_ log: ServiceLog, _ expected: [String]) async -> [String] {
        var seen: [String] = []
        for _ in 0..<100 {
            seen += log.take()
            if seen.count >= expected.count { break }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return seen
    }

    @Test func lifecycleAcrossReloads() async throws {
        let log = ServiceLog()
        RecordingServiceConfig.log = log
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let supervisor = Supervisor(group: MultiThreadedEventLoopGroup.singleton, metrics: WeirMetrics(), logger: Logger(label: "test"))

        try await supervisor.apply(config(forward(service: "a")))
        #expect(log.take() == ["start a"])

        // The pipeline changes (another target) but the service stage and its listener do not: it carries on.
        try await supervisor.apply(config(forward(service: "a", target: "127.0.0.1:10")))
        #expect(await eventually(log, []) == [])

        // The stage changes: the old one stops before the new one starts, and retires once the reload commits.
        try await supervisor.apply(config(forward(service: "b", target: "127.0.0.1:10")))
        #expect(await eventually(log, ["stop a", "start b", "stop a", "retire a"]) == ["stop a", "start b", "stop a", "retire a"])

        // A start that fails rolls back: the new stage is not retired, the old one runs again.
        await #expect(throws: ApplyError.self) {
            try await supervisor.apply(config(forward(service: "c", target: "127.0.0.1:10", fail: true)))
        }
        #expect(log.take() == ["stop b", "start c", "start b"])

        // Removing the pipeline stops and retires its stage; shutdown stops without retiring.
        try await supervisor.apply(config("pipelines:\n  q:\n    stages:\n      - type: test.service\n        name: d\n"))
        #expect(await eventually(log, ["start d", "stop b", "retire b"]) == ["start d", "stop b", "retire b"])
        await supervisor.shutdown()
        #expect(log.take() == ["stop d"])
    }

    @Test func reconcileReportsProblemsUntilTheyClear() async throws {
        RecordingServiceConfig.log = ServiceLog()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        defer { RecordingServiceConfig.problems.withLockedValue { $0 = [] } }
        let metrics = WeirMetrics()
        let supervisor = Supervisor(group: MultiThreadedEventLoopGroup.singleton, metrics: metrics, logger: Logger(label: "test"))
        func healthy() -> Double? {
            let exposition = String(decoding: metrics.render(), as: UTF8.self)
            let line = exposition.split(separator: "\n").first { $0.hasPrefix("weir_stage_healthy{pipeline=\"q\",stage=\"test.service\"}") }
            return line.flatMap { $0.split(separator: " ").last }.flatMap { Double($0) }
        }
        let one = "pipelines:\n  q:\n    stages:\n      - type: test.service\n        name: d\n"
        try await supervisor.apply(config(one))
        await supervisor.reconcile()
        #expect(metrics.health.lines.isEmpty)
        #expect(healthy() == 1)

        RecordingServiceConfig.problems.withLockedValue { $0 = ["interface x is missing"] }
        await supervisor.reconcile()
        #expect(metrics.health.lines == ["pipeline q test.service (stage 0): interface x is missing"])
        #expect(healthy() == 0)

        RecordingServiceConfig.problems.withLockedValue { $0 = [] }
        await supervisor.reconcile()
        #expect(metrics.health.lines.isEmpty)
        #expect(healthy() == 1)

        // A stage that leaves the configuration takes its problem along.
        RecordingServiceConfig.problems.withLockedValue { $0 = ["interface x is missing"] }
        await supervisor.reconcile()
        #expect(!metrics.health.lines.isEmpty)
        try await supervisor.apply(config("pipelines:\n\(tcpForward)"))
        await supervisor.reconcile()
        #expect(metrics.health.lines.isEmpty)
        await supervisor.shutdown()
    }

    let tcpForward = """
          f:
            stages:
              - type: listen.tcp
                address: 127.0.0.1:0
              - type: connect.tcp
                addresses: [127.0.0.1:9]
        """
}
