/// Reads `lists:` maps from any number of files into the load's named lists:
///
///     lists:
///       corp-allow:
///         entries: [9.9.9.9, { domain: api.example.com, protected: true }]
///
/// Only the shape is checked here; a stage that references a list decodes its entries by its own rules.
struct NamedListCollector {
    let sink: DiagnosticSink
    private var seen: [String: SourceLocation?] = [:]

    init(sink: DiagnosticSink) { self.sink = sink }

    mutating func read(_ section: ConfigValue) {
        guard let map = section.mapping else { return }
        for (name, keyLocation, value) in map.allEntries() {
            if let first = seen[name] {
                let previous = first.map { " (first defined at \($0))" } ?? ""
                sink.report(ConfigDiagnostic(location: keyLocation, path: value.path, message: "duplicate list \"\(name)\"\(previous)"))
                continue
            }
            seen[name] = keyLocation
            guard ConfigLoader.isValidName(name) else {
                sink.report(ConfigDiagnostic(location: keyLocation, path: value.path, message: "list name must be 1-64 letters, digits, '-' or '_'"))
                continue
            }
            guard let list = value.mapping else { continue }
            let entries = list.required("entries")
            list.finish()
            if let entries, entries.sequence != nil { sink.namedLists[name] = entries }
        }
    }
}
