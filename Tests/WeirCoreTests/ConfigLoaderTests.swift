import Foundation
import Testing
import WeirCore
import WeirStages

#if canImport(Glibc)
import Glibc
#endif

/// Valid configurations: defaults, drop-ins, inline pipelines, include patterns.
@Suite struct ConfigLoaderTests {
    private func systemHostname() -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        #expect(gethostname(&buffer, buffer.count) == 0)
        return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
    }

    @Test func emptyMainFileSectionsTakeDefaults() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines: {}\n")
            let config = try loader.load(path: folder.mainFile)
            #expect(config.metricsListen == (try BindAddress.parse("127.0.0.1:9477")))
            #expect(config.metricsListen?.host == "127.0.0.1")
            #expect(config.metricsListen?.port == 9477)
            #expect(config.logLevel == .info)
            #expect(config.logFormat == .text)
            #expect(config.stateDirectory == "/var/lib/weir")
            #expect(config.shutdownGrace == .seconds(10))
            #expect(config.agentID == systemHostname())
            #expect(!config.agentID.isEmpty)
            #expect(config.pipelines.isEmpty)
            #expect(config.files == [folder.mainFile])
        }
    }

    @Test func explicitAgentMetricsAndLogSettings() throws {
        try ConfigFolder.with { folder in
            try folder.write(
                "weir.yaml",
                """
                agent:
                  id: edge-7
                  state_dir: /srv/weir
                  shutdown_grace: 1m30s
                metrics:
                  listen: "[::1]:9100"
                log:
                  level: debug
                  format: json

                """)
            let config = try loader.load(path: folder.mainFile)
            #expect(config.agentID == "edge-7")
            #expect(config.stateDirectory == "/srv/weir")
            #expect(config.shutdownGrace == .seconds(90))
            #expect(config.metricsListen?.host == "::1")
            #expect(config.metricsListen?.port == 9100)
            #expect(config.logLevel == .debug)
            #expect(config.logFormat == .json)
        }
    }

    @Test func metricsOffDisablesTheEndpoint() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "metrics:\n  listen: off\n")
            let config = try loader.load(path: folder.mainFile)
            #expect(config.metricsListen == nil)
        }
    }

    @Test func destinationsTopIsReadAndBounded() throws {
        try ConfigFolder.with { folder in
            #expect(try loader.load(path: try folder.write("weir.yaml", "log:\n  level: info\n")).destinationsTop == 100)
            try folder.write("weir.yaml", "metrics:\n  destinations_top: 20\n")
            #expect(try loader.load(path: folder.mainFile).destinationsTop == 20)
            try folder.write("weir.yaml", "metrics:\n  destinations_top: 0\n")
            #expect(loadErrors(folder.mainFile).map(\.description).first?.hasPrefix("\(folder.mainFile):2:21: metrics.destinations_top:") == true)
        }
    }

    @Test func dropInsLoadFromPipelinesDNextToTheMainFile() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "log:\n  level: warning\n")
            let b = try folder.write("pipelines.d/b.yaml", "pipelines:\n  beta:\n" + tcpForward(listen: "0.0.0.0:8082"))
            let a = try folder.write("pipelines.d/a.yaml", "pipelines:\n  alpha:\n" + tcpForward(listen: "0.0.0.0:8081"))
            try folder.write("pipelines.d/notes.txt", "not: yaml: at: all: [")
            try folder.write("pipelines.d/c.yaml.disabled", "garbage: [")

            let config = try loader.load(path: folder.mainFile)
            #expect(config.logLevel == .warning)
            #expect(config.files == [folder.mainFile, a, b])
            #expect(config.pipelines.map(\.id) == ["alpha", "beta"])
            let alpha = try #require(config.pipeline("alpha"))
            #expect(alpha.stages.map(\.type) == ["listen.tcp", "connect.tcp"])
            #expect(alpha.location == WeirCore.SourceLocation(file: a, line: 2, column: 3))
            #expect(alpha.stages[0].location?.file == a)
            #expect(alpha.stages[0].location?.line == 4)
            #expect(alpha.listener?.type == "listen.tcp")
        }
    }

    @Test func inlinePipelinesInTheMainFileJoinDropIns() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines:\n  main-one:\n" + tcpForward(listen: "0.0.0.0:7001"))
            try folder.write("pipelines.d/x.yaml", "pipelines:\n  from_dropin:\n" + tcpForward(listen: "0.0.0.0:7002"))
            let config = try loader.load(path: folder.mainFile)
            // Sorted by id: "f" < "m".
            #expect(config.pipelines.map(\.id) == ["from_dropin", "main-one"])
            let main = try #require(config.pipeline("main-one"))
            #expect(main.location?.file == folder.mainFile)
            #expect(main.location?.line == 2)
        }
    }

    @Test func mainFileWithoutDropInFolderLoads() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines:\n  only:\n" + tcpForward(listen: "127.0.0.1:7003"))
            let config = try loader.load(path: folder.mainFile)
            #expect(config.pipelines.map(\.id) == ["only"])
            #expect(config.files == [folder.mainFile])
        }
    }

    @Test func customIncludeReplacesTheDefault() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "include: [\"conf/*.yml\"]\n")
            let used = try folder.write("conf/one.yml", "pipelines:\n  one:\n" + tcpForward(listen: "0.0.0.0:7010"))
            // Not matched any more: the default pattern is replaced, not extended.
            try folder.write("pipelines.d/ignored.yaml", "pipelines:\n  ignored:\n" + tcpForward(listen: "0.0.0.0:7011"))
            let config = try loader.load(path: folder.mainFile)
            #expect(config.files == [folder.mainFile, used])
            #expect(config.pipelines.map(\.id) == ["one"])
        }
    }

    @Test func absoluteIncludePatternsAreUsedAsIs() throws {
        try ConfigFolder.with { outer in
            try ConfigFolder.with { folder in
                let other = try outer.write("elsewhere/p.yaml", "pipelines:\n  far:\n" + tcpForward(listen: "0.0.0.0:7020"))
                try folder.write("weir.yaml", "include: [\"\(outer.path)/elsewhere/*.yaml\"]\n")
                let config = try loader.load(path: folder.mainFile)
                #expect(config.files == [folder.mainFile, other])
                #expect(config.pipelines.map(\.id) == ["far"])
            }
        }
    }

    @Test func loadedStagesCarryTheirDecodedOptions() throws {
        try ConfigFolder.with { folder in
            try folder.write(
                "weir.yaml",
                """
                pipelines:
                  dns:
                    stages:
                      - type: listen.udp
                        address: "[::]:5353"
                      - type: connect.udp
                        addresses: [127.0.0.53:53]
                        idle_timeout: 30s

                """)
            let config = try loader.load(path: folder.mainFile)
            let dns = try #require(config.pipeline("dns"))
            #expect(dns.stages.map(\.role) == [.listener(.datagram), .connector(.datagram)])
            #expect(dns.stages.map(\.index) == [0, 1])
            let listener = try #require(dns.stages[0].config as? any ListenerConfig)
            #expect(listener.bindAddress.host == "::")
            #expect(listener.bindAddress.port == 5353)
        }
    }
}
