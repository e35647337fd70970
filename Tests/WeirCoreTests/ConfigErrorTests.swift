import Foundation
import Testing
import WeirCore
import WeirStages

/// Errors in the main file and across files: located, rendered `FILE:LINE:COL: PATH: message`, all at once.
@Suite struct ConfigErrorTests {
    @Test func everyErrorInEveryFileIsReportedInOneLoad() throws {
        try ConfigFolder.with { folder in
            try folder.write(
                "weir.yaml",
                """
                log:
                  level: loud
                agent:
                  state_dir: var/lib/weir

                """)
            let a = try folder.write(
                "pipelines.d/a.yaml",
                """
                pipelines:
                  web:
                    stages:
                      - type: listen.tcp
                        address: 999.1.1.1:80
                      - type: connect.tcp
                        addresses: [127.0.0.1:80]

                """)
            let b = try folder.write(
                "pipelines.d/b.yaml",
                """
                pipelines:
                  other:
                    stages:
                      - type: listen.sctp
                        address: 0.0.0.0:80

                """)
            let errors = loadErrors(folder.mainFile)
            let main = folder.mainFile
            // Every error of every file, each located; the order within a file follows the reading order.
            #expect(errors.count == 4)
            #expect(errors.map { $0.location?.file } == [main, main, a, b])
            #expect(Set(errors.map(\.description)) == [
                "\(main):2:10: log.level: \"loud\" is not one of trace, debug, info, notice, warning, error, critical",
                "\(main):4:14: agent.state_dir: state_dir must be an absolute path",
                "\(a):5:18: pipelines.web.stages[0] (listen.tcp): address: \"999.1.1.1\" is not a valid host name or address",
                "\(b):4:15: pipelines.other.stages[0].type: unknown stage type \"listen.sctp\" "
                    + "(known: connect.relay, connect.reverse, connect.tcp, connect.udp, count.ebpf, dns.filter, enforce.nftables, limit.bandwidth, listen.http, listen.reverse, listen.socks5, listen.tcp, listen.tls_sni, listen.udp, route.gateway, shape.tc, transform.aead, transform.mux, transform.padding, transform.tls, transform.websocket, wireguard)",
            ])
        }
    }

    @Test func thrownErrorDescriptionIsOneLinePerDiagnostic() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "log:\n  level: loud\n  format: xml\n")
            do throws(ConfigErrors) {
                _ = try loader.load(path: folder.mainFile)
                Issue.record("expected errors")
            } catch {
                #expect(error.diagnostics.count == 2)
                #expect(error.description == """
                    \(folder.mainFile):2:10: log.level: "loud" is not one of trace, debug, info, notice, warning, error, critical
                    \(folder.mainFile):3:11: log.format: "xml" is not one of text, json
                    """)
            }
        }
    }

    @Test func unknownTopLevelKeyNamesTheAllowedKeys() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "log:\n  level: info\npipeline: {}\n")
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == [
                "\(folder.mainFile):3:1: pipeline: unknown key \"pipeline\" (allowed: agent, coordinator, include, lists, log, metrics, pipelines)"
            ])
        }
    }

    @Test func unknownKeyInsideASection() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "agent:\n  id: a\n  name: b\n")
            let errors = loadErrors(folder.mainFile)
            let error = try #require(errors.first)
            #expect(errors.count == 1)
            #expect(error.location == WeirCore.SourceLocation(file: folder.mainFile, line: 3, column: 3))
            #expect(error.path.description == "agent.name")
            #expect(error.message.hasPrefix("unknown key \"name\""))
            #expect(error.message.contains("id"))
            #expect(error.message.contains("state_dir"))
        }
    }

    @Test func relativeStateDirIsRefused() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "agent:\n  state_dir: weir-state\n")
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.message) == ["state_dir must be an absolute path"])
            #expect(errors.first?.location?.line == 2)
            #expect(errors.first?.location?.column == 14)
        }
    }

    @Test func badLogLevelIsRefused() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "log:\n  level: warn\n")
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.path.description) == ["log.level"])
            #expect(errors.first?.message.contains("\"warn\" is not one of") == true)
        }
    }

    @Test func badValueTypesInSections() throws {
        try ConfigFolder.with { folder in
            try folder.write(
                "weir.yaml",
                """
                agent: [a, b]
                metrics:
                  listen: localhost:9477
                log:
                  level: [info]
                include: pipelines.d/*.yaml

                """)
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.path.description) == ["agent", "metrics.listen", "log.level", "include"])
            #expect(errors.map(\.message) == [
                "expected a mapping, found a list",
                "\"localhost:9477\": a listen address must be an IP address, such as 0.0.0.0:9477 or [::]:9477",
                "expected a string, found a list",
                "expected a list, found a scalar",
            ])
            #expect(errors.map { $0.location?.line } == [1, 3, 5, 6])
        }
    }

    @Test func badShutdownGraceReportsTheDurationExamples() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "agent:\n  shutdown_grace: soon\n")
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == [
                "\(folder.mainFile):2:19: agent.shutdown_grace: \"soon\" is not a duration (examples: 500ms, 3s, 1m30s)"
            ])
        }
    }

    @Test func yamlSyntaxErrorInTheMainFileIsLocated() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "log:\n  level: info\n  format: [text\n")
            let errors = loadErrors(folder.mainFile)
            let error = try #require(errors.first)
            #expect(errors.count == 1)
            #expect(error.location?.file == folder.mainFile)
            #expect(error.message.hasPrefix("YAML syntax: "))
            // The unclosed flow sequence runs to the end of the file.
            #expect(error.location?.line == 4)
            #expect(error.location?.column == 1)
        }
    }

    @Test func yamlSyntaxErrorInADropInDoesNotHideOtherErrors() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "log:\n  level: loud\n")
            let broken = try folder.write("pipelines.d/broken.yaml", "pipelines:\n  web:\n    stages:\n  - bad indent\n")
            let errors = loadErrors(folder.mainFile)
            #expect(errors.count == 2)
            #expect(errors.first?.path.description == "log.level")
            let syntax = try #require(errors.last)
            #expect(syntax.location?.file == broken)
            #expect(syntax.location?.line == 4)
            #expect(syntax.location?.column == 3)
            #expect(syntax.message.hasPrefix("YAML syntax: "))
        }
    }

    @Test func unreadableMainFileIsReported() throws {
        try ConfigFolder.with { folder in
            let missing = folder.path + "/nope.yaml"
            let errors = loadErrors(missing)
            #expect(errors.map(\.description) == ["\(missing): cannot read file (No such file or directory)"])
            // A drop-in pattern that matches a folder names it too, instead of reading it.
            try folder.write("weir.yaml", "include: [\"conf.d/*\"]\n")
            try FileManager.default.createDirectory(atPath: folder.path + "/conf.d/sub.yaml", withIntermediateDirectories: true)
            #expect(loadErrors(folder.mainFile).map(\.description) == ["\(folder.path)/conf.d/sub.yaml: cannot read file (not a regular file)"])
        }
    }

    @Test func emptyMainFileIsReported() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "# only a comment\n")
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == ["\(folder.mainFile):1:1: file is empty"])
        }
    }

    @Test func dropInNeedsAPipelinesSection() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines: {}\n")
            let dropIn = try folder.write("pipelines.d/a.yaml", "pipeline:\n  web: {}\n")
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == [
                "\(dropIn):1:1: missing required key \"pipelines\"",
                "\(dropIn):1:1: pipeline: unknown key \"pipeline\" (allowed: lists, pipelines)",
            ])
        }
    }
}
