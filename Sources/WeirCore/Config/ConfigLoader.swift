import Foundation
import Logging
import Yams

/// Reads the main file and its drop-ins into a validated `AgentConfig`, or reports every error at once.
public struct ConfigLoader: Sendable {
    public let registry: StageRegistry
    /// What the last load composed and decoded, reused while its input is unchanged.
    private let previousLoad = PreviousLoad()

    public init(registry: StageRegistry) { self.registry = registry }

    public func load(path: String) throws(ConfigErrors) -> AgentConfig {
        let sink = DiagnosticSink()
        var files = [path]
        let previous = previousLoad.generation()
        defer { previousLoad.keep(previous) }
        var pipelines = PipelineCollector(registry: registry, sink: sink, previous: previous)
        var config = AgentConfig(
            agentID: Self.hostname(), stateDirectory: "/var/lib/weir", shutdownGrace: .seconds(10),
            metricsListen: try? BindAddress.parse(AgentConfig.defaultMetricsListen),
            logLevel: .info, logFormat: .text, coordinator: nil, pipelines: [], files: [])

        guard let root = Self.parseFile(path, sink: sink, previous: previous)?.mapping else { throw ConfigErrors(sink.diagnostics) }
        readAgent(root.optional("agent"), into: &config)
        readMetrics(root.optional("metrics"), into: &config)
        readLog(root.optional("log"), into: &config)
        readCoordinator(root.optional("coordinator"), into: &config)
        let include = root.optional("include").flatMap { value in value.sequence?.compactMap(\.string) }
        // Lists first, from every file, so a pipeline may use a list defined in any of them.
        var documents: [(lists: ConfigValue?, pipelines: ConfigValue?)] = [(root.optional("lists"), root.optional("pipelines"))]
        root.finish()

        let baseDirectory = (path as NSString).deletingLastPathComponent
        var dropIns: [String] = []
        for pattern in include ?? AgentConfig.defaultInclude {
            let absolute = pattern.hasPrefix("/") ? pattern : (baseDirectory as NSString).appendingPathComponent(pattern)
            dropIns += Self.glob(absolute)
        }
        if config.coordinator != nil {
            // The coordinator's bundle, read like any drop-in: a pipeline id used both here and there is a duplicate.
            dropIns += Self.glob((config.coordinatorDirectory as NSString).appendingPathComponent("bundle/*.yaml"))
        }
        for file in dropIns {
            files.append(file)
            guard let document = Self.parseFile(file, sink: sink, previous: previous)?.mapping else { continue }
            documents.append(Self.dropInSections(document))
        }
        var lists = NamedListCollector(sink: sink)
        for document in documents { if let section = document.lists { lists.read(section) } }
        for document in documents { if let section = document.pipelines { pipelines.read(section) } }

        config.pipelines = pipelines.validated()
        config.files = files
        if sink.hasErrors { throw ConfigErrors(sink.diagnostics) }
        return config
    }

    /// A drop-in holds `pipelines:`, `lists:` or both.
    static func dropInSections(_ document: ConfigMapping) -> (lists: ConfigValue?, pipelines: ConfigValue?) {
        let lists = document.optional("lists")
        let pipelines = lists == nil ? document.required("pipelines") : document.optional("pipelines")
        document.finish()
        return (lists, pipelines)
    }

    /// Validates a standalone document holding a `pipelines:` map, a `lists:` map or both (a drop-in file's
    /// content); its pipelines may use its lists and those of `listFiles` (other drop-ins' content, by name).
    public func loadPipelines(yaml: String, name: String, listFiles: [(name: String, yaml: String)] = []) throws(ConfigErrors) -> [PipelineSpec] {
        let sink = DiagnosticSink()
        var pipelines = PipelineCollector(registry: registry, sink: sink)
        var lists = NamedListCollector(sink: sink)
        for file in listFiles {
            guard let document = Self.parse(file.yaml, file: file.name, sink: sink)?.mapping else { continue }
            if let section = Self.dropInSections(document).lists { lists.read(section) }
        }
        if let document = Self.parse(yaml, file: name, sink: sink)?.mapping {
            let sections = Self.dropInSections(document)
            if let section = sections.lists { lists.read(section) }
            if let section = sections.pipelines { pipelines.read(section) }
        }
        let result = pipelines.validated(strict: false)
        if sink.hasErrors { throw ConfigErrors(sink.diagnostics) }
        return result
    }

    // MARK: - Sections

    private func readAgent(_ value: ConfigValue?, into config: inout AgentConfig) {
        guard let agent = value?.mapping else { return }
        if let id = agent.optional("id")?.string { config.agentID = id }
        if let dir = agent.optional("state_dir")?.absolutePath { config.stateDirectory = dir }
        if let dir = agent.optional("bpf_pin_dir")?.absolutePath { config.bpfPinDirectory = dir }
        if let grace = agent.optional("shutdown_grace")?.parsed(DurationParser.parse) { config.shutdownGrace = grace }
        if let limit = agent.optional("max_connections")?.int(in: 1...10_000_000) { config.maxConnections = limit }
        agent.finish()
    }

    private func readMetrics(_ value: ConfigValue?, into config: inout AgentConfig) {
        guard let metrics = value?.mapping else { return }
        if let listen = metrics.optional("listen") {
            if case .scalar(let scalar) = listen.node, scalar.string == "off" {
                config.metricsListen = nil
            } else if let address = listen.parsed(BindAddress.parse) {
                config.metricsListen = address
            }
        }
        if let top = metrics.optional("destinations_top")?.int(in: 1...10_000) { config.destinationsTop = top }
        metrics.finish()
    }

    private func readLog(_ value: ConfigValue?, into config: inout AgentConfig) {
        Self.readLog(value, level: &config.logLevel, format: &config.logFormat)
    }

    /// The `log:` section, shared by the agent's and the coordinator's files.
    public static func readLog(_ value: ConfigValue?, level: inout Logger.Level, format: inout AgentConfig.LogFormat) {
        guard let log = value?.mapping else { return }
        if let levelValue = log.optional("level"), let text = levelValue.string {
            if let parsed = Logger.Level(rawValue: text) {
                level = parsed
            } else {
                levelValue.error("\"\(text)\" is not one of trace, debug, info, notice, warning, error, critical")
            }
        }
        if let parsed = log.optional("format")?.oneOf(AgentConfig.LogFormat.self) { format = parsed }
        log.finish()
    }

    private func readCoordinator(_ value: ConfigValue?, into config: inout AgentConfig) {
        guard let section = value?.mapping else { return }
        func path(_ key: String) -> String? { section.optional(key)?.absolutePath }
        let urlValue = section.required("url")
        let url = urlValue?.string ?? ""
        if let urlValue, !url.isEmpty {
            if !url.hasPrefix("wss://") {
                urlValue.error("\"\(url)\": the coordinator is reached over TLS: wss://host:port")
            } else if URL(string: url)?.host == nil {
                urlValue.error("\"\(url)\" is not a URL")
            }
        }
        var labels: [String: String] = [:]
        if let map = section.optional("labels")?.mapping {
            for (key, _, value) in map.allEntries() {
                guard let text = value.string else { continue }
                if Self.isValidLabel(key) && Self.isValidLabel(text) { labels[key] = text } else {
                    value.error("label \(key)=\(text): keys and values are 1-63 letters, digits, '-', '_', '.' or '/'")
                }
            }
        }
        config.coordinator = CoordinatorSettings(
            url: url, tokenFile: path("token_file"), credentialFile: path("credential_file"), caFile: path("ca"), labels: labels)
        section.finish()
    }

    /// Pipeline ids and list names here; document, list and relay names in the coordinator.
    public static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.count) && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
    }

    /// Label keys and values, here and in the coordinator's selectors.
    public static func isValidLabel(_ text: String) -> Bool {
        (1...63).contains(text.count) && text.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_./".contains($0)) }
    }

    // MARK: - Files

    public static func parseFile(_ path: String, sink: DiagnosticSink) -> ConfigValue? {
        parseFile(path, sink: sink, previous: nil)
    }

    static func parseFile(_ path: String, sink: DiagnosticSink, previous: PreviousLoad.Generation?) -> ConfigValue? {
        let text: String
        switch ConfigFile.read(path, maxBytes: YAMLBudget().maxBytes) {
        case .text(let read):
            text = read
        case .tooLarge(let size, let maxBytes):
            // Refused before reading: parse would refuse the text anyway, after reading all of it.
            sink.report(ConfigDiagnostic(
                location: SourceLocation(file: path, line: 1, column: 1), path: .root,
                message: "the file is \(size) bytes; at most \(maxBytes) are read"))
            return nil
        case .unreadable(let reason):
            sink.report(ConfigDiagnostic(location: nil, path: .root, message: "\(path): cannot read file (\(reason))"))
            return nil
        case .notUTF8:
            sink.report(ConfigDiagnostic(location: SourceLocation(file: path, line: 1, column: 1), path: .root, message: "file is not UTF-8"))
            return nil
        }
        if let node = previous?.node(path: path, text: text) { return ConfigValue(node: node, file: path, path: .root, sink: sink) }
        let value = parse(text, file: path, sink: sink)
        if let value { previous?.add(path: path, text: text, node: value.node) }
        return value
    }

    static func parse(_ text: String, file: String, sink: DiagnosticSink) -> ConfigValue? {
        if let (line, column, message) = YAMLBudget().violation(in: text) {
            sink.report(ConfigDiagnostic(location: SourceLocation(file: file, line: line, column: column), path: .root, message: message))
            return nil
        }
        do {
            // No implicit tag resolution: Yams resolves each plain scalar by trying a regular expression per
            // type, which was most of a reload's time; ConfigValue reads integers and booleans from plain
            // scalars itself, when a stage asks for one.
            guard let node = try Yams.compose(yaml: text, .basic) else {
                sink.report(ConfigDiagnostic(location: SourceLocation(file: file, line: 1, column: 1), path: .root, message: "file is empty"))
                return nil
            }
            return ConfigValue(node: node, file: file, path: .root, sink: sink)
        } catch let error as YamlError {
            sink.report(Self.diagnostic(for: error, file: file))
            return nil
        } catch {
            sink.report(ConfigDiagnostic(location: SourceLocation(file: file, line: 1, column: 1), path: .root, message: "\(error)"))
            return nil
        }
    }

    private static func diagnostic(for error: YamlError, file: String) -> ConfigDiagnostic {
        func at(_ mark: Mark, _ message: String) -> ConfigDiagnostic {
            ConfigDiagnostic(location: SourceLocation(file: file, line: mark.line, column: mark.column), path: .root, message: message)
        }
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
            .composer(let context, let problem, let mark, _):
            return at(mark, "YAML syntax: " + [context?.text, problem].compactMap { $0 }.joined(separator: " "))
        case .duplicatedKeysInMapping(let duplicates, let context):
            return at(context.mark, "duplicate keys: \(duplicates.joined(separator: ", "))")
        default:
            return ConfigDiagnostic(location: SourceLocation(file: file, line: 1, column: 1), path: .root, message: "YAML: \(error)")
        }
    }

    /// Files matching `pattern`, sorted, so drop-ins load in a stable order.
    static func glob(_ pattern: String) -> [String] {
        var result = glob_t()
        defer { globfree(&result) }
        guard Glibc.glob(pattern, 0, nil, &result) == 0 else { return [] }
        return (0..<Int(result.gl_pathc)).compactMap { result.gl_pathv[$0].map { String(cString: $0) } }.sorted()
    }

    static func hostname() -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "weir" }
        return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
    }
}
