/// The stage types an agent knows, by `type` name.
public struct StageRegistry: Sendable {
    public let all: [any StageConfig.Type]
    private let byType: [String: any StageConfig.Type]

    public init(_ types: [any StageConfig.Type]) {
        var byType: [String: any StageConfig.Type] = [:]
        for type in types {
            precondition(byType[type.type] == nil, "stage type \(type.type) registered twice")
            byType[type.type] = type
        }
        self.all = types.sorted { $0.type < $1.type }
        self.byType = byType
    }

    public subscript(type: String) -> (any StageConfig.Type)? { byType[type] }
}
