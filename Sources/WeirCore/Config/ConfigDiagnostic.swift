/// A position in a configuration file, 1-based as editors show it.
public struct SourceLocation: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int

    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }

    public var description: String { "\(file):\(line):\(column)" }
}

/// Where a value sits in the configuration tree.
///
/// Inside a stage, the path is rendered as `pipelines.ID.stages[N] (TYPE)` and the keys below the stage
/// move into the message, so every stage error reads `FILE:LINE:COL: pipelines.ID.stages[N] (TYPE): key: message`.
public struct ConfigPath: Sendable, Hashable, CustomStringConvertible {
    /// Segments down to and including the stage (or all segments outside a stage).
    public var scope: [String]
    /// The stage type when the path is inside a stage.
    public var stageType: String?
    /// Keys below the stage.
    public var keys: [String]

    public init(scope: [String] = [], stageType: String? = nil, keys: [String] = []) {
        self.scope = scope
        self.stageType = stageType
        self.keys = keys
    }

    public static let root = ConfigPath()

    /// Appends a mapping key or a `[N]` index segment.
    public func appending(_ segment: String) -> ConfigPath {
        var copy = self
        if copy.stageType == nil { copy.scope.append(segment) } else { copy.keys.append(segment) }
        return copy
    }

    public func enteringStage(type: String) -> ConfigPath {
        var copy = self
        copy.stageType = type
        return copy
    }

    static func join(_ segments: [String]) -> String {
        var out = ""
        for segment in segments {
            if segment.hasPrefix("[") || out.isEmpty { out += segment } else { out += "." + segment }
        }
        return out
    }

    public var description: String {
        var out = Self.join(scope)
        if let stageType { out += " (\(stageType))" }
        if !keys.isEmpty { out += (out.isEmpty ? "" : ": ") + Self.join(keys) }
        return out
    }
}

/// One configuration error, printed as `FILE:LINE:COL: PATH: message`.
public struct ConfigDiagnostic: Error, Sendable, Hashable, CustomStringConvertible {
    public var location: SourceLocation?
    public var path: ConfigPath
    public var message: String

    public init(location: SourceLocation?, path: ConfigPath, message: String) {
        self.location = location
        self.path = path
        self.message = message
    }

    public var description: String {
        var out = location.map { "\($0): " } ?? ""
        let path = path.description
        if !path.isEmpty { out += path + ": " }
        return out + message
    }
}

/// Every error found in one configuration, reported together.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var diagnostics: [ConfigDiagnostic]

    public init(_ diagnostics: [ConfigDiagnostic]) { self.diagnostics = diagnostics }

    public var description: String { diagnostics.map(\.description).joined(separator: "\n") }
}

/// Collects diagnostics while a configuration is read, so one pass reports every error. It is also what all
/// values of one load share, so it carries the load's named lists to the stages that reference them.
public final class DiagnosticSink {
    public private(set) var diagnostics: [ConfigDiagnostic] = []
    /// `lists:` sections of every file of the load: name -> the list's `entries` value and its kind.
    var namedLists: [String: (entries: ConfigValue, kind: NamedListKind)] = [:]

    public init() {}

    public func report(_ diagnostic: ConfigDiagnostic) { diagnostics.append(diagnostic) }

    public var hasErrors: Bool { !diagnostics.isEmpty }
}
