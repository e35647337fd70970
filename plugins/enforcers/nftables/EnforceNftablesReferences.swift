import WeirCore

/// What enforce.nftables takes from other pipelines: the dns.filter that `dns_hijack` sends clients to, and
/// the dns.filters whose answers `domains_from` entries follow.
extension EnforceNftablesConfig: ReferencesPipelines {
    public var references: [PipelineReference] {
        var references: [PipelineReference] = []
        if let pipeline = dnsHijack?.resolverPipeline {
            references.append(PipelineReference(pipeline: pipeline, stageType: "dns.filter", option: "dns_hijack.resolver"))
        }
        for followed in destinations?.followed ?? [] {
            references.append(PipelineReference(pipeline: followed.pipeline, stageType: "dns.filter", option: "allow_destinations.entries.domains_from"))
        }
        return references
    }

    public func resolvingReferences(_ targets: [PipelineReference: any StageConfig]) -> (config: EnforceNftablesConfig, fingerprint: String, error: String?) {
        var config = self
        var taken: [String] = []
        for (reference, target) in targets.sorted(by: { $0.key.option + $0.key.pipeline < $1.key.option + $1.key.pipeline }) {
            guard let server = target as? any ServesDNS else { continue }
            if reference.option == "dns_hijack.resolver", var hijack = config.dnsHijack {
                let listen = server.dnsListen
                hijack.port = listen.port
                if listen.host == "0.0.0.0" || listen.host == "::" {
                    // Listening everywhere: to this host's address on the interface the query came in.
                    hijack.resolver = nil
                } else if let bytes = IPNetwork.addressBytes(listen.host) {
                    let address = IPNetwork(bytes: bytes, prefix: bytes.count * 8)
                    if hijack.sources.contains(where: { $0.isIPv4 != address.isIPv4 }) {
                        return (self, "", "dns_hijack: sources must be of the address family of pipeline \"\(reference.pipeline)\"'s dns.filter (\(listen))")
                    }
                    hijack.resolver = address
                }
                config.dnsHijack = hijack
                taken.append("hijack=\(listen)")
            } else {
                config.destinations?.followedUpstreams += server.dnsUpstreams
                taken.append("upstreams=\(server.dnsUpstreams.map(\.description).joined(separator: ","))")
                for followed in config.destinations?.followed ?? [] where followed.pipeline == reference.pipeline {
                    let known = ["default"] + server.dnsGroupNames
                    let unknown = followed.groups.filter { !known.contains($0) }
                    if !unknown.isEmpty {
                        return (self, "", "allow_destinations: domains_from \(followed.pipeline): groups \(unknown.joined(separator: ", ")) are not groups of its dns.filter (it has: \(known.joined(separator: ", ")))")
                    }
                }
            }
        }
        return (config, taken.joined(separator: ";"), nil)
    }

    static func decodeFollowed(_ value: ConfigValue) -> FollowedDNS? {
        guard let map = value.mapping else { return nil }
        let pipeline = map.required("domains_from").flatMap { value -> String? in
            guard let name = value.string, ConfigLoader.isValidName(name) else {
                value.error("the name of a pipeline with a dns.filter stage")
                return nil
            }
            return name
        }
        let domains = map.optional("domains", default: [String]()) { value -> [String]? in
            guard let items = value.sequence else { return nil }
            let names = items.map { item -> String? in
                guard let text = item.string else { return nil }
                let bare = text.hasPrefix("*.") ? String(text.dropFirst(2)) : text
                guard let name = DomainName.normalized(bare) else {
                    item.error("\"\(text)\" is not a domain name")
                    return nil
                }
                return name
            }
            return names.contains(nil) ? nil : names.compactMap { $0 }
        }
        let groups = map.optional("groups", default: [String]()) { value -> [String]? in
            guard let items = value.sequence else { return nil }
            let names = items.map(\.string)
            return names.contains(nil) ? nil : names.compactMap { $0 }
        }
        let allowPrivate = map.optional("allow_private", default: false) { $0.bool }
        map.finish()
        guard let pipeline, let domains, let groups, let allowPrivate else { return nil }
        return FollowedDNS(pipeline: pipeline, domains: domains, groups: groups, allowPrivate: allowPrivate)
    }
}
