import ArgumentParser
import Foundation
import WeirCore
import WeirStages
import WeirTunnels

/// `weir wireguard config PIPELINE PEER`: a peer's client configuration (wg-quick format), or its QR code.
struct WireGuardCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wireguard", abstract: "WireGuard peers of the agent's wireguard stages.", subcommands: [WireGuardConfigCommand.self])
}

struct WireGuardConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Print a peer's client configuration (wg-quick format); --qr prints it as a QR code.")

    @OptionGroup var options: ConfigOption
    @Argument(help: "The pipeline with the wireguard stage.") var pipeline: String
    @Argument(help: "The peer's name.") var peer: String
    @Flag(help: "Print a QR code for the WireGuard mobile apps (needs qrencode).") var qr = false

    func run() throws {
        let config: AgentConfig
        do {
            config = try ConfigLoader(registry: BuiltinStages.registry).load(path: options.config)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitStatus.config
        }
        guard let spec = config.pipeline(pipeline), let stage = spec.stages.lazy.compactMap({ $0.config as? WireGuardConfig }).first else {
            FileHandle.standardError.write(Data("no pipeline \"\(pipeline)\" with a wireguard stage in \(options.config)\n".utf8))
            throw ExitCode.failure
        }
        let text: String
        do {
            text = try ClientConfiguration.render(stage, pipeline: pipeline, peer: peer, stateDirectory: config.stateDirectory)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode.failure
        }
        guard qr else {
            print(text, terminator: "")
            return
        }
        guard let qrencode = ["/usr/bin/qrencode", "/usr/local/bin/qrencode"].first(where: FileManager.default.isExecutableFile) else {
            FileHandle.standardError.write(Data("--qr needs qrencode (Debian package qrencode)\n".utf8))
            throw ExitCode.failure
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: qrencode)
        process.arguments = ["-t", "ansiutf8"]
        let input = Pipe()
        process.standardInput = input
        try process.run()
        input.fileHandleForWriting.write(Data(text.utf8))
        try input.fileHandleForWriting.close()
        process.waitUntilExit()
        if process.terminationStatus != 0 { throw ExitCode(process.terminationStatus) }
    }
}
