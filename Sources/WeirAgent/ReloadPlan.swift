import WeirCore

/// What a reload changes, by pipeline id: the diff between the running and the new configuration.
public struct ReloadPlan: Sendable, Equatable {
    public var toAdd: [String] = []
    public var toRemove: [String] = []
    public var toChange: [String] = []
    public var unchanged: [String] = []

    public init(toAdd: [String] = [], toRemove: [String] = [], toChange: [String] = [], unchanged: [String] = []) {
        self.toAdd = toAdd
        self.toRemove = toRemove
        self.toChange = toChange
        self.unchanged = unchanged
    }

    /// Compares pipelines by fingerprint: `old` and `new` map pipeline id to fingerprint.
    public init(old: [String: String], new: [String: String]) {
        for (id, fingerprint) in new.sorted(by: { $0.key < $1.key }) {
            switch old[id] {
            case nil: toAdd.append(id)
            case fingerprint: unchanged.append(id)
            default: toChange.append(id)
            }
        }
        toRemove = old.keys.filter { new[$0] == nil }.sorted()
    }

    public init(old: [PipelineSpec], new: [PipelineSpec]) {
        self.init(
            old: Dictionary(uniqueKeysWithValues: old.map { ($0.id, $0.fingerprint) }),
            new: Dictionary(uniqueKeysWithValues: new.map { ($0.id, $0.fingerprint) }))
    }

    public var isEmpty: Bool { toAdd.isEmpty && toRemove.isEmpty && toChange.isEmpty }
}
