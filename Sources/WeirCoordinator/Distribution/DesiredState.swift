import WeirCoordinatorProtocol

/// The desired state at one moment: documents and assignments, read once and rendered for every agent.
struct DesiredState: Sendable {
    var documents: [String: PipelineDocument]
    var assignments: [Assignment]
    /// Every named list as one drop-in, nil when there are none.
    var listsFile: ConfigBundle.File?

    init(
        documents: [PipelineDocument], assignments: [Assignment], lists: [NamedList], relays: [Relay] = [],
        vpnServers: [(document: PipelineDocument, assignment: Assignment)] = []
    ) {
        // Relays add their two rendered documents and assignments, VPN servers one each.
        let rendered = relays.map { $0.rendered(at: $0.createdAt) }
        self.documents = Dictionary(
            (documents + rendered.flatMap(\.documents) + vpnServers.map(\.document)).map { ($0.name, $0) }, uniquingKeysWith: { $1 })
        self.assignments = assignments + rendered.flatMap(\.assignments) + vpnServers.map(\.assignment)
        listsFile = lists.isEmpty ? nil : ConfigBundle.File(name: NamedListFile.fileName, content: NamedListFile.render(lists))
    }

    /// Every document assigned to the agent, directly or through its labels, each once, as a drop-in file;
    /// and the named lists, which any stage of the agent may use (its own drop-ins included).
    func bundle(for agent: AgentRecord) -> ConfigBundle {
        var names = Set<String>()
        for assignment in assignments where assignment.applies(to: agent) { names.insert(assignment.pipeline) }
        let files = names.compactMap { name in documents[name].map { ConfigBundle.File(name: name + ".yaml", content: $0.document) } }
        return ConfigBundle(files: files + (listsFile.map { [$0] } ?? []))
    }
}
