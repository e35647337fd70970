import Foundation
import Yams

/// A YAML value together with its file position and key path.
///
/// Readers never throw: a value of the wrong shape reports a diagnostic and yields `nil`, so a whole file
/// is checked in one pass and every error is shown at once.
public struct ConfigValue {
    public let node: Node
    public let file: String
    public let path: ConfigPath
    let sink: DiagnosticSink

    public init(node: Node, file: String, path: ConfigPath, sink: DiagnosticSink) {
        self.node = node
        self.file = file
        self.path = path
        self.sink = sink
    }

    public var location: SourceLocation? {
        node.mark.map { SourceLocation(file: file, line: $0.line, column: $0.column) }
    }

    /// Reports an error at this value.
    public func error(_ message: String) {
        sink.report(ConfigDiagnostic(location: location, path: path, message: message))
    }

    /// A path that must be absolute (a relative one would depend on the working directory of whoever starts
    /// the process); the error names the key.
    public var absolutePath: String? {
        guard let text = string else { return nil }
        guard text.hasPrefix("/") else {
            error("\(path.scope.last ?? "path") must be an absolute path")
            return nil
        }
        return text
    }

    /// A file the configuration names: absolute, or relative to the directory of the YAML file it is written in.
    public var filePath: String? {
        guard let text = string else { return nil }
        guard !text.isEmpty else {
            error("must name a file")
            return nil
        }
        if text.hasPrefix("/") { return text }
        return URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent(text).path
    }

    /// A named list's `entries` (from a `lists:` section of any file of this load), or nil with an error
    /// reported here when there is no such list or it is of another kind. Stages decode the entries themselves,
    /// so a list is checked by the rules of the stage that uses it, at the list's own file and line.
    public func namedList(_ name: String, kinds: Set<NamedListKind> = [.destinations]) -> ConfigValue? {
        if let list = sink.namedLists[name] {
            guard kinds.contains(list.kind) else {
                let wanted = NamedListKind.allCases.filter(kinds.contains).map(\.rawValue).joined(separator: " or ")
                error("list \"\(name)\" is a \(list.kind.rawValue) list; this takes \(wanted)")
                return nil
            }
            return list.entries
        }
        let known = sink.namedLists.keys.sorted()
        error("unknown list \"\(name)\"" + (known.isEmpty ? " (no lists are defined)" : " (defined: \(known.joined(separator: ", ")))"))
        return nil
    }

    public func child(_ node: Node, _ segment: String) -> ConfigValue {
        ConfigValue(node: node, file: file, path: path.appending(segment), sink: sink)
    }

    /// A scalar as text; plain scalars, quoted strings and numbers are all accepted.
    /// What the node is, without reporting anything: for values that may take several shapes.
    public var isScalar: Bool { node.scalar != nil }
    public var isMapping: Bool { node.mapping != nil }
    /// Whether the value is a mapping with `key` (nothing is reported or marked read).
    public func hasKey(_ key: String) -> Bool {
        node.mapping?.contains { pair in pair.key.scalar?.string == key } ?? false
    }

    public var string: String? {
        guard case .scalar(let scalar) = node else {
            error("expected a string, found \(node.kindName)")
            return nil
        }
        return scalar.string
    }

    /// YAML 1.1's booleans, unquoted: true/yes/on and false/no/off, in any case.
    public var bool: Bool? {
        let value: Bool? =
            switch node {
            case .scalar(let scalar) where scalar.style == .plain || scalar.style == .any:
                switch scalar.string.lowercased() {
                case "true", "yes", "on": true
                case "false", "no", "off": false
                default: nil
                }
            default: nil
            }
        guard let value else {
            error("expected true or false, found \(node.summary)")
            return nil
        }
        return value
    }

    public func int(in range: ClosedRange<Int>) -> Int? {
        guard case .scalar(let scalar) = node, let value = Int.construct(from: scalar) else {
            error("expected an integer, found \(node.summary)")
            return nil
        }
        guard range.contains(value) else {
            error("\(value) is out of range \(range.lowerBound)...\(range.upperBound)")
            return nil
        }
        return value
    }

    public var sequence: [ConfigValue]? {
        guard case .sequence(let items) = node else {
            error("expected a list, found \(node.kindName)")
            return nil
        }
        return items.enumerated().map { ConfigValue(node: $1, file: file, path: path.appending("[\($0)]"), sink: sink) }
    }

    public var mapping: ConfigMapping? {
        guard case .mapping(let pairs) = node else {
            error("expected a mapping, found \(node.kindName)")
            return nil
        }
        return ConfigMapping(value: self, pairs: pairs)
    }

    /// Parses the scalar with `parse`, reporting `parse`'s error message at this value.
    public func parsed<T>(_ parse: (String) throws -> T) -> T? {
        guard let text = string else { return nil }
        do {
            return try parse(text)
        } catch {
            self.error("\(error)")
            return nil
        }
    }

    /// A duration (`30s`, `5m`) of at least `minimum`.
    public func duration(atLeast minimum: Duration) -> Duration? {
        guard let duration = parsed(DurationParser.parse) else { return nil }
        guard duration >= minimum else {
            let (seconds, attoseconds) = minimum.components
            error("must be at least " + (attoseconds == 0 ? "\(seconds)s" : "\(Int((minimum / .milliseconds(1)).rounded()))ms"))
            return nil
        }
        return duration
    }

    /// A non-empty list of `host:port` targets.
    public func hostPorts() -> [HostPort]? {
        guard let items = sequence else { return nil }
        if items.isEmpty {
            error("needs at least one host:port")
            return nil
        }
        let parsed = items.map { $0.parsed(HostPort.parse) }
        return parsed.contains { $0 == nil } ? nil : parsed.compactMap { $0 }
    }

    /// A scalar that must be one of `choices`.
    public func oneOf<T: RawRepresentable & CaseIterable>(_ type: T.Type) -> T? where T.RawValue == String {
        guard let text = string else { return nil }
        if let value = T(rawValue: text) { return value }
        error("\"\(text)\" is not one of \(T.allCases.map(\.rawValue).joined(separator: ", "))")
        return nil
    }
}

/// A YAML mapping whose keys are checked off as they are read; `finish()` reports the keys nobody read.
public final class ConfigMapping {
    public let value: ConfigValue
    private let entries: [(key: String, keyNode: Node, value: Node)]
    private var consumed: Set<String> = []

    init(value: ConfigValue, pairs: Node.Mapping) {
        self.value = value
        var entries: [(key: String, keyNode: Node, value: Node)] = []
        var seen: Set<String> = []
        for (key, item) in pairs {
            guard case .scalar(let scalar) = key else {
                value.child(key, "?").error("mapping keys must be strings")
                continue
            }
            if !seen.insert(scalar.string).inserted {
                value.child(key, scalar.string).error("duplicate key")
                continue
            }
            entries.append((scalar.string, key, item))
        }
        self.entries = entries
    }

    /// The value under `key`, or nil when absent. Marks the key as known.
    public func optional(_ key: String) -> ConfigValue? {
        consumed.insert(key)
        guard let entry = entries.first(where: { $0.key == key }) else { return nil }
        if case .scalar(let scalar) = entry.value, scalar.style == .plain,
            ["", "~", "null", "Null", "NULL"].contains(scalar.string)
        {
            return nil
        }
        return value.child(entry.value, key)
    }

    /// The value under `key` read by `read`; `defaultValue` when absent; nil when present but invalid.
    public func optional<T>(_ key: String, default defaultValue: T, _ read: (ConfigValue) -> T?) -> T? {
        guard let value = optional(key) else { return defaultValue }
        return read(value)
    }

    /// The value under `key`; reports a missing key at the mapping.
    public func required(_ key: String) -> ConfigValue? {
        guard let found = optional(key) else {
            value.error("missing required key \"\(key)\"")
            return nil
        }
        return found
    }

    /// Every entry, each marked as known; for maps keyed by user-chosen names.
    public func allEntries() -> [(key: String, keyLocation: SourceLocation?, value: ConfigValue)] {
        entries.map { entry in
            consumed.insert(entry.key)
            let location = entry.keyNode.mark.map { SourceLocation(file: value.file, line: $0.line, column: $0.column) }
            return (entry.key, location, value.child(entry.value, entry.key))
        }
    }

    /// Reports every key that was never read as unknown, naming the keys that are allowed.
    public func finish() {
        let known = consumed.sorted()
        for entry in entries where !consumed.contains(entry.key) {
            value.child(entry.keyNode, entry.key).error(
                "unknown key \"\(entry.key)\"" + (known.isEmpty ? "" : " (allowed: \(known.joined(separator: ", ")))")
            )
        }
    }
}

extension Node {
    var kindName: String {
        switch self {
        case .scalar: return "a scalar"
        case .mapping: return "a mapping"
        case .sequence: return "a list"
        case .alias: return "an alias"
        }
    }

    var summary: String {
        if case .scalar(let scalar) = self { return "\"\(scalar.string)\"" }
        return kindName
    }

    /// A canonical text of the value, independent of key order, quoting style and position; two pipelines
    /// with equal fingerprints behave the same.
    public var fingerprint: String {
        var text = ""
        appendFingerprint(to: &text)
        return text
    }

    /// Builds the fingerprint in one string (a reload fingerprints every stage of every pipeline).
    private func appendFingerprint(to text: inout String) {
        switch self {
        case .scalar(let scalar):
            // Length-prefixed rather than quoted: unambiguous, and escaping every scalar was a tenth of a reload.
            text += "s"
            text += String(scalar.string.utf8.count)
            text += ":"
            text += scalar.string
        case .sequence(let items):
            text += "["
            for (index, item) in items.enumerated() {
                if index > 0 { text += "," }
                item.appendFingerprint(to: &text)
            }
            text += "]"
        case .mapping(let pairs):
            let rendered = pairs.map { ($0.key.fingerprint, $0.value.fingerprint) }.sorted { $0.0 < $1.0 }
            text += "{"
            for (index, (key, value)) in rendered.enumerated() {
                if index > 0 { text += "," }
                text += key
                text += ":"
                text += value
            }
            text += "}"
        case .alias:
            text += "alias"
        }
    }
}
