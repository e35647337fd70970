import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import WeirAgent
import WeirCoordinator
import WeirCore
import WeirStages

@main
struct Weir: AsyncParsableCommand {
    static let version = AgentInfo.version

    static let configuration = CommandConfiguration(
        commandName: "weir",
        abstract: "A host agent for forwarding, securing, shaping and measuring network traffic.",
        subcommands: [AgentCommand.self, CoordinatorCommand.self, Ctl.self, Validate.self, Stages.self, WireGuardCommand.self, MonitorCommand.self, Version.self]
    )
}

/// Exit codes from sysexits.h, as systemd and operators expect them.
enum ExitStatus {
    static let config = ExitCode(78)  // EX_CONFIG
    static let software = ExitCode(70)  // EX_SOFTWARE
}

struct ConfigOption: ParsableArguments {
    @Option(name: .long, help: "Main configuration file.")
    var config: String = AgentConfig.defaultPath
}

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run the agent in the foreground. SIGHUP reloads; SIGTERM or SIGINT drains and exits."
    )

    @OptionGroup var options: ConfigOption

    func run() async throws {
        LoggingSystem.bootstrap(WeirLogHandler.init)
        let logger = Logger(label: "weir")
        let metrics = WeirMetrics()
        metrics.bootstrapMetricsSystem()
        let agent = Agent(configPath: options.config, registry: BuiltinStages.registry, metrics: metrics, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: agent, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        do {
            try await group.run()
        } catch let error as Agent.StartError {
            logger.critical("\(error)")
            if case .invalidConfig = error { throw ExitStatus.config }
            throw ExitCode.failure
        } catch let error as ServiceGroupError {
            logger.critical("\(error)")
            throw ExitCode.failure
        }
    }
}

struct CoordinatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "The coordinator: agent registry, desired state and its distribution, REST API (/api/v1), web console (/).",
        subcommands: [CoordinatorRun.self, CoordinatorAdmin.self],
        defaultSubcommand: CoordinatorRun.self
    )
}

struct CoordinatorRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the coordinator (the default: `weir coordinator --config FILE`)."
    )

    @Option(name: .long, help: "Coordinator configuration file.")
    var config: String = CoordinatorConfig.defaultPath

    func run() async throws {
        LoggingSystem.bootstrap(WeirLogHandler.init)
        let logger = Logger(label: "weir-coordinator")
        let settings: CoordinatorConfig
        do {
            settings = try CoordinatorConfig.load(path: config)
        } catch {
            logger.critical("invalid configuration:\n\(error)")
            throw ExitStatus.config
        }
        WeirLogHandler.settings.update(level: settings.logLevel, format: settings.logFormat)
        let coordinator = Coordinator(config: settings, registry: BuiltinStages.registry, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: coordinator, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch let error as Coordinator.StartError {
            logger.critical("\(error)")
            throw ExitCode.failure
        }
    }
}

struct CoordinatorAdmin: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "admin",
        abstract: "Web console accounts, through the coordinator's database (on its host).",
        subcommands: [Create.self, List.self]
    )

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a console account; without --password-stdin a strong password is made and printed once.")

        @Option(name: .long, help: "Coordinator configuration file.") var config: String = CoordinatorConfig.defaultPath
        @Option(help: "admin, operator or viewer.") var role: String = "admin"
        @Flag(help: "Read the password from standard input (one line).") var passwordStdin = false
        @Argument(help: "Account name (a-z, 0-9, '.', '_', '@', '-').") var name: String

        func run() async throws {
            let settings: CoordinatorConfig
            do { settings = try CoordinatorConfig.load(path: config) } catch {
                FileHandle.standardError.write(Data("invalid configuration:\n\(error)\n".utf8))
                throw ExitStatus.config
            }
            let password = passwordStdin ? readLine(strippingNewline: true) ?? "" : nil
            do {
                let chosen = try await ConsoleAdmin.create(config: settings, name: name, role: role, password: password)
                print("created console account \(name) (\(role))")
                if password == nil { print("password: \(chosen)") }
            } catch let error as ConsoleAdmin.Failure {
                FileHandle.standardError.write(Data("error: \(error)\n".utf8))
                throw ExitCode.failure
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List console accounts.")

        @Option(name: .long, help: "Coordinator configuration file.") var config: String = CoordinatorConfig.defaultPath

        func run() async throws {
            let settings: CoordinatorConfig
            do { settings = try CoordinatorConfig.load(path: config) } catch {
                FileHandle.standardError.write(Data("invalid configuration:\n\(error)\n".utf8))
                throw ExitStatus.config
            }
            for line in try await ConsoleAdmin.list(config: settings) {
                print("\(line.name)\t\(line.role)\t\(line.locked ? "locked" : "-")\t\(line.sessions) sessions")
            }
        }
    }
}

struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a configuration: exit 0 when valid, 78 (EX_CONFIG) with every error listed when not."
    )

    @OptionGroup var options: ConfigOption

    func run() throws {
        do {
            let config = try ConfigLoader(registry: BuiltinStages.registry).load(path: options.config)
            print("\(options.config): valid (\(config.pipelines.count) pipelines in \(config.files.count) files)")
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitStatus.config
        }
    }
}

struct Stages: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List stage types, or show one stage type's options and sample."
    )

    @Argument(help: "A stage type, e.g. listen.tcp.")
    var type: String?

    func run() throws {
        let registry = BuiltinStages.registry
        guard let type else {
            let width = registry.all.map { $0.type.count }.max() ?? 0
            for stage in registry.all {
                print(stage.type.padding(toLength: width + 2, withPad: " ", startingAt: 0) + stage.summary)
            }
            return
        }
        guard let stage = registry[type] else {
            FileHandle.standardError.write(Data("unknown stage type \"\(type)\"; run `weir stages` for the list\n".utf8))
            throw ExitCode(64)
        }
        print("\(stage.type): \(stage.summary)\n\nOptions:")
        for option in stage.options {
            let defaultText = option.defaultValue.map { " (default: \($0))" } ?? ""
            print("  \(option.name) <\(option.type)>\(defaultText)\(option.secret ? " [secret: redacted for API viewers]" : "")\n      \(option.summary)")
        }
        print("\nSample:\n\(stage.sample)")
    }
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the version.")

    func run() {
        print("weir \(Weir.version)")
    }
}
