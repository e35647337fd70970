// libyaml's event parser, the one Yams is built on (a C target of the Yams package, reachable to packages that
// depend on Yams). The check has to run before Yams composes the document: composing hashes mapping keys to
// find duplicates, and a key that is an alias of an alias bomb never finishes hashing.
import CYaml

/// Bounds on what one configuration document (a file, a coordinator document) may cost to read.
///
/// YAML aliases repeat a node without repeating its text, so a few hundred bytes ("billion laughs": ten levels
/// of nine references each) stand for billions of values; anything that walks such a document — Yams' own
/// duplicate-key check, validation, fingerprints — runs and allocates without bound. The budget counts every
/// value as often as aliases repeat it, from libyaml's events and the sizes of anchored nodes, so checking it
/// costs one pass over the text whatever the document expands to.
public struct YAMLBudget: Sendable {
    /// The largest document read at all.
    public var maxBytes = 64 << 20
    /// Values once every alias is expanded: ten per byte of text is far more than aliases that share settings
    /// between pipelines ever need, while an alias bomb exceeds it by orders of magnitude.
    public var maxValuesPerByte = 10
    public var minValues = 10_000
    public var maxValues = 10_000_000
    /// Nesting of mappings and sequences; Weir's configuration is never deeper than a dozen levels.
    public var maxDepth = 64

    public init() {}

    /// Why `text` is over the budget, with the line and column (1-based) where reading stopped; nil when within.
    public func violation(in text: String) -> (line: Int, column: Int, message: String)? {
        let bytes = Array(text.utf8)
        if bytes.count > maxBytes {
            return (1, 1, "the document is \(bytes.count) bytes; at most \(maxBytes) are read")
        }
        let valueLimit = min(maxValues, max(minValues, bytes.count * maxValuesPerByte))
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return (1, 1, "cannot start the YAML parser") }
        defer { yaml_parser_delete(&parser) }
        return bytes.withUnsafeBufferPointer { buffer in
            yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
            var walk = Walk()
            while true {
                var event = yaml_event_t()
                // Syntax errors are left to the composer, which reports them with their context.
                guard yaml_parser_parse(&parser, &event) == 1 else { return nil }
                defer { yaml_event_delete(&event) }
                let at = (line: Int(event.start_mark.line) + 1, column: Int(event.start_mark.column) + 1)
                switch event.type {
                case YAML_STREAM_END_EVENT:
                    return nil
                case YAML_SCALAR_EVENT:
                    walk.value(size: 1, anchor: Self.name(event.data.scalar.anchor))
                case YAML_ALIAS_EVENT:
                    walk.value(size: Self.name(event.data.alias.anchor).flatMap { walk.anchored[$0] } ?? 1, anchor: nil)
                case YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                    let anchor = Self.name(event.type == YAML_SEQUENCE_START_EVENT ? event.data.sequence_start.anchor : event.data.mapping_start.anchor)
                    walk.open(anchor: anchor)
                    if walk.open.count > maxDepth {
                        return (at.line, at.column, "nesting deeper than \(maxDepth) levels")
                    }
                case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                    walk.close()
                default:
                    continue
                }
                if walk.total > valueLimit {
                    return (at.line, at.column,
                            "the document stands for more than \(valueLimit) values once its aliases are expanded (anchors that repeat each other?); refusing to read it")
                }
            }
        }
    }

    private static func name(_ pointer: UnsafeMutablePointer<yaml_char_t>?) -> String? {
        pointer.map { String(cString: UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self)) }
    }

    /// Sizes as the events go by: every value counts as often as it is repeated.
    private struct Walk {
        /// Expanded size of each anchored node (an anchor may be redefined; the latest counts, as in YAML).
        var anchored: [String: Int] = [:]
        /// Open collections: their expanded size so far and their anchor.
        var open: [(size: Int, anchor: String?)] = []
        var total = 0

        mutating func value(size: Int, anchor: String?) {
            total += size
            if let anchor { anchored[anchor] = size }
            if !open.isEmpty { open[open.count - 1].size += size }
        }

        mutating func open(anchor: String?) {
            total += 1
            open.append((1, anchor))
        }

        mutating func close() {
            guard let (size, anchor) = open.popLast() else { return }
            if let anchor { anchored[anchor] = size }
            if !open.isEmpty { open[open.count - 1].size += size }
        }
    }
}
