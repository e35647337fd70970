import Yams

/// Hides the values of secret options (passwords, proxy users' passwords, auth headers) in a pipeline
/// document, for readers who may see the configuration but not its secrets. Which options are secret is
/// the stage's own schema (`OptionDoc.secret`); a secret that is a map keeps its keys (user names, header
/// names) and loses its values.
///
/// The document keeps its layout and comments: each secret scalar is replaced where it is written. When a
/// scalar's extent cannot be found exactly (a block scalar, a plain scalar over several lines) the document
/// is written again from its parsed form instead, which drops comments but never a redaction. The result is
/// parsed once more and checked before it is returned.
public struct SecretRedaction: Sendable {
    public static let placeholder = "<redacted>"
    private let secretOptions: [String: Set<String>]

    public init(registry: StageRegistry) {
        var secrets: [String: Set<String>] = [:]
        for type in registry.all {
            let names = type.options.filter(\.secret).map(\.name)
            if !names.isEmpty { secrets[type.type] = Set(names) }
        }
        secretOptions = secrets
    }

    /// `document` with every secret value replaced by `<redacted>`; a document that does not parse is
    /// withheld entirely (it may hold a secret the parser could not place).
    public func redact(_ document: String) -> String {
        guard let root = try? Yams.compose(yaml: document, .basic) else { return "# withheld: the document does not parse\n" }
        let secrets = secretScalars(in: root)
        if secrets.isEmpty { return document }
        // Whatever else holds the same text (an anchor's first use, a copy under another key) goes too.
        let values = Set(secrets.map(\.string).filter { $0.count >= 4 })
        func clean(_ text: String) -> Bool { isRedacted(text) && !values.contains { text.contains($0) } }
        if let edited = replaceInPlace(document, secrets), clean(edited) { return edited }
        // An alias is composed as a copy of its anchor's node, mark included: redacting by mark reaches the anchor.
        let marks = Set(secrets.compactMap { $0.mark.map { [$0.line, $0.column] } })
        let rewritten = (try? Yams.serialize(node: redactedCopy(of: root, marks: marks))) ?? ""
        return clean(rewritten) ? rewritten : "# withheld: secrets could not be redacted\n"
    }

    // MARK: - Finding secrets

    private func secretScalars(in root: Node) -> [Node.Scalar] {
        var found: [Node.Scalar] = []
        visitStages(root) { _, value in collectScalars(value, into: &found) }
        return found
    }

    /// Calls `body` with each secret option's key and value in every mapping whose `type` is a stage type.
    private func visitStages(_ node: Node, _ body: (Node, Node) -> Void) {
        switch node {
        case .mapping(let mapping):
            if let type = mapping["type"]?.scalar?.string, let names = secretOptions[type] {
                for (key, value) in mapping where key.scalar.map({ names.contains($0.string) }) == true { body(key, value) }
            }
            for (_, value) in mapping { visitStages(value, body) }
        case .sequence(let sequence):
            for item in sequence { visitStages(item, body) }
        default:
            break
        }
    }

    private func collectScalars(_ node: Node, into found: inout [Node.Scalar]) {
        switch node {
        case .scalar(let scalar): found.append(scalar)
        case .mapping(let mapping): for (_, value) in mapping { collectScalars(value, into: &found) }
        case .sequence(let sequence): for item in sequence { collectScalars(item, into: &found) }
        default: break
        }
    }

    private func isRedacted(_ text: String) -> Bool {
        guard let root = try? Yams.compose(yaml: text, .basic) else { return false }
        return secretScalars(in: root).allSatisfy { $0.string == Self.placeholder }
    }

    // MARK: - Replacing

    /// Replaces each scalar's source text; nil when one cannot be delimited exactly.
    private func replaceInPlace(_ document: String, _ scalars: [Node.Scalar]) -> String? {
        let text = Array(document.unicodeScalars)
        var lineStarts = [0]
        for (offset, character) in text.enumerated() where character == "\n" { lineStarts.append(offset + 1) }
        var spans: [Range<Int>] = []
        for scalar in scalars {
            // Yams marks are 1-based lines and columns counted in characters, as libyaml counts them.
            guard let mark = scalar.mark, mark.line >= 1, mark.line <= lineStarts.count else { return nil }
            let start = lineStarts[mark.line - 1] + mark.column - 1
            guard start >= 0, start < text.count, let span = Self.span(of: scalar, in: text, from: start) else { return nil }
            spans.append(span)
        }
        // An alias names its anchor's scalar: the same span more than once.
        let unique = Set(spans).sorted { $0.lowerBound > $1.lowerBound }
        var result = text
        var previousStart = Int.max
        for span in unique {
            guard span.upperBound <= previousStart else { return nil }  // overlapping: cannot be
            result.replaceSubrange(span, with: Self.placeholder.unicodeScalars)
            previousStart = span.lowerBound
        }
        var output = String.UnicodeScalarView()
        output.append(contentsOf: result)
        return String(output)
    }

    /// The source text of the scalar marked at `mark`, for plain one-line and quoted scalars.
    private static func span(of scalar: Node.Scalar, in text: [Unicode.Scalar], from mark: Int) -> Range<Int>? {
        // The mark of an anchored or tagged scalar is its `&anchor` or `!tag`: the value follows.
        var start = mark
        while start < text.count, text[start] == "&" || text[start] == "!" {
            while start < text.count, text[start] != " ", text[start] != "\n" { start += 1 }
            while start < text.count, text[start] == " " { start += 1 }
        }
        guard start < text.count, let end = end(of: scalar, in: text, from: start) else { return nil }
        return start..<end
    }

    private static func end(of scalar: Node.Scalar, in text: [Unicode.Scalar], from start: Int) -> Int? {
        switch scalar.style {
        case .plain, .any:
            let value = Array(scalar.string.unicodeScalars)
            guard !value.contains("\n"), start + value.count <= text.count, Array(text[start..<start + value.count]) == value else { return nil }
            return start + value.count
        case .doubleQuoted:
            guard text[start] == "\"" else { return nil }
            var index = start + 1
            while index < text.count {
                if text[index] == "\\" { index += 2; continue }
                if text[index] == "\"" { return index + 1 }
                index += 1
            }
            return nil
        case .singleQuoted:
            guard text[start] == "'" else { return nil }
            var index = start + 1
            while index < text.count {
                if text[index] == "'" {
                    if index + 1 < text.count, text[index + 1] == "'" { index += 2; continue }
                    return index + 1
                }
                index += 1
            }
            return nil
        default:
            return nil
        }
    }

    private func redactedCopy(of node: Node, marks: Set<[Int]>) -> Node {
        switch node {
        case .scalar(let scalar):
            guard let mark = scalar.mark, marks.contains([mark.line, mark.column]) else { return node }
            return .scalar(Node.Scalar(Self.placeholder))
        case .mapping(let mapping):
            let type = mapping["type"]?.scalar?.string
            let names = type.flatMap { secretOptions[$0] } ?? []
            let pairs = mapping.map { key, value -> (Node, Node) in
                if let name = key.scalar?.string, names.contains(name) { return (key, Self.replacingScalars(value)) }
                return (key, redactedCopy(of: value, marks: marks))
            }
            return .mapping(Node.Mapping(pairs, mapping.tag, mapping.style))
        case .sequence(let sequence):
            return .sequence(Node.Sequence(sequence.map { redactedCopy(of: $0, marks: marks) }, sequence.tag, sequence.style))
        default:
            return node
        }
    }

    private static func replacingScalars(_ node: Node) -> Node {
        switch node {
        case .scalar: return .scalar(Node.Scalar(placeholder))
        case .mapping(let mapping): return .mapping(Node.Mapping(mapping.map { ($0, replacingScalars($1)) }, mapping.tag, mapping.style))
        case .sequence(let sequence): return .sequence(Node.Sequence(sequence.map(replacingScalars), sequence.tag, sequence.style))
        default: return node
        }
    }
}
