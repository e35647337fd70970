import NIOConcurrencyHelpers
import Yams

/// The YAML documents of the last configuration load, by file, so a reload composes only the files whose
/// text changed. Composing is most of a reload's cost, and an agent with a thousand drop-ins usually reloads
/// for one of them. A document depends on its text alone (a file's name and its text give the same nodes and
/// marks), so reusing it cannot change what validation reports. Only the files of the latest load are kept.
final class ComposedFiles: Sendable {
    /// Unchecked: a composed Node is an immutable value, never changed after composing.
    fileprivate struct Entry: @unchecked Sendable {
        let text: String
        let node: Node
    }

    private let latest = NIOLockedValueBox<[String: Entry]>([:])

    /// What one load reads from and adds to.
    final class Generation: @unchecked Sendable {
        fileprivate let previous: [String: Entry]
        fileprivate var current: [String: Entry] = [:]

        fileprivate init(previous: [String: Entry]) { self.previous = previous }

        func node(path: String, text: String) -> Node? {
            guard let entry = previous[path], entry.text == text else { return nil }
            current[path] = entry
            return entry.node
        }

        func add(path: String, text: String, node: Node) { current[path] = Entry(text: text, node: node) }
    }

    func generation() -> Generation { Generation(previous: latest.withLockedValue { $0 }) }

    /// The files `generation` read become the ones kept.
    func keep(_ generation: Generation) { latest.withLockedValue { $0 = generation.current } }
}
