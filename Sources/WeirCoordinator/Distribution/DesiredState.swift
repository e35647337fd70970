import WeirCoordinatorProtocol

/// The desired state at one moment: documents and assignments, read once and rendered for every agent.
struct DesiredState: Sendable {
    var documents: [String: PipelineDocument]
    var assignments: [Assignment]

    init(documents: [PipelineDocument], assignments: [Assignment]) {
        self.documents = Dictionary(documents.map { ($0.name, $0) }, uniquingKeysWith: { $1 })
        self.assignments = assignments
    }

    /// Every document assigned to the agent, directly or through its labels, each once, as a drop-in file.
    func bundle(for agent: AgentRecord) -> ConfigBundle {
        var names = Set<String>()
        for assignment in assignments where assignment.applies(to: agent) { names.insert(assignment.pipeline) }
        let files = names.compactMap { name in documents[name].map { ConfigBundle.File(name: name + ".yaml", content: $0.document) } }
        return ConfigBundle(files: files)
    }
}
