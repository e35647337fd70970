import WeirCore

/// The commands that take one owner's objects from `current` to `desired`, touching nothing that is already
/// right: unchanged sets keep their elements and element counters, unchanged chains keep their rules.
///
/// Structure and interval-set elements go into one libnftables batch (`commands`); address-set elements go
/// into one netlink batch (`addressChanges`) sent after it, because libnftables 1.0 scans a set's every
/// element in user space for each element command.
struct NftPlan: Sendable {
    var commands: [NftJSON] = []
    var addressChanges: [(set: String, add: [IPNetwork], remove: [IPNetwork])] = []

    var isEmpty: Bool { commands.isEmpty && addressChanges.isEmpty }

    init(owner: String, from current: NftOwnerState, to desired: NftOwnerState) {
        func object(_ kind: String, _ fields: [(String, NftJSON)]) -> NftJSON {
            .object([(kind, .object([("family", .string(NftNames.family)), ("table", .string(NftNames.table))] + fields))])
        }
        func named(_ kind: String, _ name: String, _ extra: [(String, NftJSON)] = []) -> NftJSON {
            object(kind, [("name", .string(NftNames.full(owner, name)))] + extra)
        }
        var create: [NftJSON] = []
        var flush: [NftJSON] = []
        var delete: [NftJSON] = []
        var late: [NftJSON] = []

        // Sets whose definition changed are recreated; the rules using them are rewritten below.
        let recreatedSets = Set(desired.sets.keys.filter { name in current.sets[name].map { $0 != desired.sets[name]! } ?? false })
        let obsoleteSets = Set(current.sets.keys).subtracting(desired.sets.keys)

        // Chains: new, changed (rules or hook), obsolete. A chain referring to a recreated or obsolete set is changed.
        var changedChains: Set<String> = []
        for (name, chain) in desired.chains {
            guard let existing = current.chains[name] else { continue }
            if existing.base != chain.base || existing.rules != chain.rules { changedChains.insert(name) }
        }
        if !recreatedSets.isEmpty || !obsoleteSets.isEmpty { changedChains.formUnion(current.chains.keys.filter { desired.chains[$0] != nil }) }
        let obsoleteChains = Set(current.chains.keys).subtracting(desired.chains.keys)
        let rebasedChains = changedChains.filter { current.chains[$0]?.base != desired.chains[$0]?.base }

        // Empty the chains that change or go first, so nothing refers to what is deleted or recreated.
        for name in (changedChains.union(obsoleteChains)).sorted() where current.chains[name] != nil {
            flush.append(.object([("flush", named("chain", name))]))
        }
        for name in recreatedSets.union(obsoleteSets).sorted() { delete.append(.object([("delete", named("set", name))])) }
        for name in rebasedChains.union(obsoleteChains).sorted() { delete.append(.object([("delete", named("chain", name))])) }

        for name in desired.counters.subtracting(current.counters).sorted() { create.append(.object([("add", named("counter", name))])) }
        for (name, spec) in desired.sets.sorted(by: { $0.key < $1.key }) where current.sets[name] == nil || recreatedSets.contains(name) {
            let parts = spec.type.components(separatedBy: " . ")
            var fields: [(String, NftJSON)] = [("type", parts.count > 1 ? .array(parts.map { .string($0) }) : .string(spec.type))]
            if spec.interval { fields.append(("flags", ["interval"])) }
            if spec.timeout { fields.append(("flags", ["timeout"])) }
            if let size = spec.size { fields.append(("size", .number(size))) }
            if spec.counter { fields.append(("stmt", [["counter": .null]])) }
            create.append(.object([("add", named("set", name, fields))]))
        }
        // Interval-set elements, as deltas where the set stays.
        for (name, networks) in desired.networks.sorted(by: { $0.key < $1.key }) {
            let kept = recreatedSets.contains(name) ? [] : current.networks[name] ?? []
            let adding = networks.subtracting(kept).sorted()
            let removing = kept.subtracting(networks).sorted()
            if !removing.isEmpty {
                late.insert(.object([("delete", named("element", name, [("elem", .array(removing.map(Expr.value)))]))]), at: 0)
            }
            if !adding.isEmpty { late.append(.object([("add", named("element", name, [("elem", .array(adding.map(Expr.value)))]))])) }
        }
        // Chains: create every missing one before any rule, since rules may jump to them.
        let createdChains = desired.chains.keys.filter { current.chains[$0] == nil || rebasedChains.contains($0) }.sorted()
        for name in createdChains {
            let chain = desired.chains[name]!
            var fields: [(String, NftJSON)] = []
            if let base = chain.base {
                fields = [("type", .string(base.type)), ("hook", .string(base.hook)), ("prio", .number(base.priority)), ("policy", "accept")]
            }
            late.append(.object([("add", named("chain", name, fields))]))
        }
        for name in (Set(createdChains).union(changedChains)).sorted() {
            for rule in desired.chains[name]?.rules ?? [] {
                late.append(.object([("add", object("rule", [
                    ("chain", .string(NftNames.full(owner, name))), ("comment", .string(rule.comment)), ("expr", rule.expr ?? []),
                ]))]))
            }
        }
        for name in current.counters.subtracting(desired.counters).sorted() { late.append(.object([("delete", named("counter", name))])) }

        // Order matters inside the batch: nothing is deleted while referred to, nothing referred to before it exists.
        let structural = flush + delete + create + late
        if !structural.isEmpty {
            let table: NftJSON = .object([("add", .object([("table", .object([("family", .string(NftNames.family)), ("name", .string(NftNames.table))]))]))])
            // Removing everything must not bring back a table that a sweep just deleted.
            commands = (desired.isEmpty ? [] : [table]) + structural
        }

        for (name, addresses) in desired.addresses.sorted(by: { $0.key < $1.key }) {
            let kept = recreatedSets.contains(name) ? [] : current.addresses[name] ?? []
            let adding = addresses.subtracting(kept).sorted()
            let removing = kept.subtracting(addresses).sorted()
            if !adding.isEmpty || !removing.isEmpty { addressChanges.append((name, adding, removing)) }
        }
    }
}
