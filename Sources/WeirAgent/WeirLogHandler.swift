import Foundation
import Logging
import NIOConcurrencyHelpers
import WeirCore

/// Logs to stderr as text or JSON lines; level and format can change on reload.
public struct WeirLogHandler: LogHandler {
    /// Shared by every logger of the process, so a reload reconfigures them all.
    public final class Settings: Sendable {
        private let state = NIOLockedValueBox<(Logger.Level, AgentConfig.LogFormat)>((.info, .text))

        public init() {}

        public func update(level: Logger.Level, format: AgentConfig.LogFormat) {
            state.withLockedValue { $0 = (level, format) }
        }

        var current: (Logger.Level, AgentConfig.LogFormat) { state.withLockedValue { $0 } }
    }

    public static let settings = Settings()

    private let label: String
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?

    public init(label: String) { self.label = label }

    public var logLevel: Logger.Level {
        get { Self.settings.current.0 }
        set { Self.settings.update(level: newValue, format: Self.settings.current.1) }
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let (level, format) = Self.settings.current
        guard event.level >= level else { return }
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { $1 } }
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let time = Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))
        let line: String
        switch format {
        case .text:
            let rendered = fields.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            line = "\(time) \(event.level) \(event.message)\(rendered.isEmpty ? "" : " " + rendered)\n"
        case .json:
            var object: [String: String] = ["time": time, "level": "\(event.level)", "message": "\(event.message)", "logger": label]
            for (key, value) in fields { object[key] = "\(value)" }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            line = String(decoding: data, as: UTF8.self) + "\n"
        }
        FileHandle.standardError.write(Data(line.utf8))
    }
}
