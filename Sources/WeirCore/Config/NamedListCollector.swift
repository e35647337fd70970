/// Reads `lists:` maps from any number of files into the load's named lists:
///
///     lists:
///       corp-allow:
///         entries: [9.9.9.9, { domain: api.example.com, protected: true }]
///       office-names:
///         kind: dns_records
///         entries: ["10.0.0.5 app.internal", { name: wiki.internal, alias: app.internal }]
///
/// Only the shape is checked here; a stage that references a list decodes its entries by its own rules, and
/// takes only the kinds it understands.
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
            let kind = list.optional("kind", default: NamedListKind.destinations) { value in
                value.string.flatMap { text in
                    NamedListKind(rawValue: text) ?? {
                        value.error("one of \(NamedListKind.allCases.map(\.rawValue).joined(separator: ", "))")
                        return nil
                    }()
                }
            }
            list.finish()
            if let entries, let kind, entries.sequence != nil { sink.namedLists[name] = (entries, kind) }
        }
    }
}

/// What a named list holds, which decides the stages that may use it and how the coordinator checks it.
public enum NamedListKind: String, CaseIterable, Codable, Sendable {
    /// Addresses, networks and domains (enforce.nftables allow and deny lists; dns.filter takes the domains).
    case destinations
    /// Block or allow rules in any dns.filter format (hosts lines, domains, `||adblock^`, `*.wildcards`).
    case dnsRules = "dns_rules"
    /// Names answered by dns.filter: `ADDRESS NAME...` lines, `{name, addresses}` or `{name, alias}`.
    case dnsRecords = "dns_records"
}
