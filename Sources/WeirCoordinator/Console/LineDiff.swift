/// A line diff of two texts, as reviewers read one: removed and added lines with a few unchanged lines of
/// context around each change, longer unchanged runs folded. Built on the standard library's
/// `CollectionDifference` (Myers' algorithm).
struct LineDiff: Equatable {
    enum Kind: String, Equatable { case same, removed, added, folded }

    struct Line: Equatable {
        var kind: Kind
        var text: String
        /// Line numbers in the old and the new text (nil where the line is not in that text).
        var old: Int?
        var new: Int?
    }

    var lines: [Line]
    var added: Int { lines.count { $0.kind == .added } }
    var removed: Int { lines.count { $0.kind == .removed } }
    var isEmpty: Bool { added == 0 && removed == 0 }

    init(old: String, new: String, context: Int = 3) {
        let before = Self.split(old), after = Self.split(new)
        let difference = after.difference(from: before)
        var removedOffsets = Set<Int>(), insertedOffsets = Set<Int>()
        for change in difference {
            switch change {
            case .remove(let offset, _, _): removedOffsets.insert(offset)
            case .insert(let offset, _, _): insertedOffsets.insert(offset)
            }
        }
        // The lines neither removed nor inserted are the same lines in the same order in both texts.
        var all: [Line] = []
        var i = 0, j = 0
        while i < before.count || j < after.count {
            if i < before.count, removedOffsets.contains(i) {
                all.append(Line(kind: .removed, text: before[i], old: i + 1, new: nil))
                i += 1
            } else if j < after.count, insertedOffsets.contains(j) {
                all.append(Line(kind: .added, text: after[j], old: nil, new: j + 1))
                j += 1
            } else {
                all.append(Line(kind: .same, text: after[j], old: i + 1, new: j + 1))
                i += 1
                j += 1
            }
        }
        lines = Self.fold(all, context: context)
    }

    /// Unchanged lines further than `context` from any change become one `folded` line saying how many.
    private static func fold(_ all: [Line], context: Int) -> [Line] {
        let changed = all.indices.filter { all[$0].kind != .same }
        var keep = [Bool](repeating: false, count: all.count)
        for index in changed {
            for near in max(0, index - context)...min(all.count - 1, index + context) { keep[near] = true }
        }
        var result: [Line] = []
        var hidden = 0
        func flush() {
            if hidden > 0 { result.append(Line(kind: .folded, text: "\(hidden) unchanged line\(hidden == 1 ? "" : "s")")) }
            hidden = 0
        }
        for (index, line) in all.enumerated() {
            if keep[index] {
                flush()
                result.append(line)
            } else {
                hidden += 1
            }
        }
        flush()
        return result
    }

    /// Lines without their ends; a final newline does not make an empty last line.
    private static func split(_ text: String) -> [String] {
        var lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        if lines.last == "" { lines.removeLast() }
        return lines
    }

    /// `-`/`+`/` ` prefixed text, as `diff -u` prints a hunk's lines.
    var unified: String {
        lines.map { line in
            switch line.kind {
            case .same: " " + line.text
            case .removed: "-" + line.text
            case .added: "+" + line.text
            case .folded: "@@ \(line.text) @@"
            }
        }.joined(separator: "\n")
    }
}
