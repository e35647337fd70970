import CNftables
import CWeirNetlink
import Foundation
import Logging
import NIOConcurrencyHelpers
import WeirCore

struct NftError: Error, CustomStringConvertible {
    let description: String
}

/// Weir's table (`inet weir`), shared by every enforce.nftables stage of the process. Each stage owns the
/// objects named after its pipeline; this type applies an owner's desired state as a delta, remembers what it
/// applied, and removes what no running stage owns. Every use of libnftables runs on the one thread with a
/// descriptor table of its own (libnftables waits on its netlink socket with `select()`, which aborts the
/// process for a descriptor above 1023), which also runs them one at a time.
final class NftablesTable: Sendable {
    static let shared = NftablesTable()

    private struct Context: @unchecked Sendable {
        let pointer: OpaquePointer
    }

    /// Serialises whole operations (list, plan, apply), so a sweep never reads half of a stage's removal.
    private let operations = NIOLock()
    /// What each owner's objects are now, as last applied or listed. Absent: list the kernel first.
    private let applied = NIOLockedValueBox<[String: NftOwnerState]>([:])
    private let logger = Logger(label: "weir.enforce.nftables")

    /// Runs libnftables commands (JSON) as one transaction and returns their output. Listings leave out set
    /// elements (terse: address sets can hold 100,000 and are read over netlink) unless `withElements`.
    @discardableResult
    func run(_ commands: [NftJSON], withElements: Bool = false) throws -> String {
        if commands.isEmpty { return "" }
        return try run(text: NftJSON.object([("nftables", .array(commands))]).text, terse: !withElements)
    }

    private func run(text: String, terse: Bool) throws -> String {
        try DescriptorIsolatedThread.netlink.run {
            guard let context = nft_ctx_new(UInt32(NFT_CTX_DEFAULT)) else { throw NftError(description: "libnftables: cannot create a context") }
            defer { nft_ctx_free(context) }
            nft_ctx_output_set_flags(context, UInt32(NFT_CTX_OUTPUT_JSON | NFT_CTX_OUTPUT_HANDLE | (terse ? NFT_CTX_OUTPUT_TERSE : 0)))
            nft_ctx_buffer_output(context)
            nft_ctx_buffer_error(context)
            let status = nft_run_cmd_from_buffer(context, text)
            let output = nft_ctx_get_output_buffer(context).map { String(cString: $0) } ?? ""
            if status != 0 {
                let error = nft_ctx_get_error_buffer(context).map { String(cString: $0) } ?? ""
                throw NftError(description: "nftables refused the batch: " + error.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            return output
        }
    }

    // MARK: - Reading the kernel

    /// Everything in Weir's table, by owner; empty when the table does not exist.
    func listOwners() throws -> [String: NftOwnerState] {
        let output: String
        do {
            output = try run([["list": ["table": ["family": .string(NftNames.family), "name": .string(NftNames.table)]]]])
        } catch {
            // No table yet.
            if "\(error)".contains("No such file or directory") { return [:] }
            throw error
        }
        var owners: [String: NftOwnerState] = [:]
        var intervalSets: [(owner: String, name: String)] = []
        var addressSets: [(owner: String, name: String, ipv4: Bool)] = []
        for item in try NftJSON.parse(output)["nftables"]?.array ?? [] {
            if let chain = item["chain"], let full = chain["name"]?.string, let (owner, name) = NftNames.split(full) {
                var base: NftOwnerState.BaseChain?
                if let type = chain["type"]?.string, let hook = chain["hook"]?.string {
                    base = .init(type: type, hook: hook, priority: chain["prio"]?.int ?? 0)
                }
                owners[owner, default: .init()].chains[name, default: .init(base: base, rules: [])].base = base
            } else if let rule = item["rule"], let full = rule["chain"]?.string, let (owner, name) = NftNames.split(full) {
                let comment = rule["comment"]?.string ?? "foreign:\(rule["handle"]?.int ?? 0)"
                owners[owner, default: .init()].chains[name, default: .init(base: nil, rules: [])].rules.append(.init(comment: comment, expr: nil))
            } else if let set = item["set"], let full = set["name"]?.string, let (owner, name) = NftNames.split(full) {
                let flags = set["flags"]?.array?.compactMap(\.string) ?? []
                let type = set["type"]?.string ?? set["type"]?.array?.compactMap(\.string).joined(separator: " . ") ?? ""
                let spec = NftOwnerState.SetSpec(
                    type: type, interval: flags.contains("interval"), counter: set["stmt"] != nil, size: set["size"]?.int, timeout: flags.contains("timeout"))
                owners[owner, default: .init()].sets[name] = spec
                if spec.interval {
                    intervalSets.append((owner, name))
                } else if !spec.timeout {
                    // Sets with timeouts are filled by their stage at run time, not from the desired state.
                    addressSets.append((owner, name, spec.type == "ipv4_addr"))
                }
            } else if let counter = item["counter"], let full = counter["name"]?.string, let (owner, name) = NftNames.split(full) {
                owners[owner, default: .init()].counters.insert(name)
            }
        }
        for (owner, name) in intervalSets { owners[owner]?.networks[name] = try listIntervalSet(NftNames.full(owner, name)) }
        for (owner, name, _) in addressSets { owners[owner]?.addresses[name] = Set(try listAddressSet(NftNames.full(owner, name)).map(\.network)) }
        return owners
    }

    /// The elements of an interval set (small: configured networks).
    func listIntervalSet(_ fullName: String) throws -> Set<IPNetwork> {
        Set(try listIntervalSetCounters(fullName).map(\.network))
    }

    /// The elements of an interval set with their counters (zero when the set keeps none).
    func listIntervalSetCounters(_ fullName: String) throws -> [(network: IPNetwork, packets: UInt64, bytes: UInt64)] {
        // With elements: a terse listing of an interval set is empty, which made a start keep the networks a
        // configuration had dropped while the agent was stopped.
        let output = try run([["list": ["set": ["family": .string(NftNames.family), "table": .string(NftNames.table), "name": .string(fullName)]]]], withElements: true)
        var result: [(network: IPNetwork, packets: UInt64, bytes: UInt64)] = []
        for item in try NftJSON.parse(output)["nftables"]?.array ?? [] {
            for element in item["set"]?["elem"]?.array ?? [] {
                let value = element["elem"]?["val"] ?? element
                let counter = element["elem"]?["counter"]
                var network: IPNetwork?
                if let text = value.string {
                    network = try? IPNetwork.parse(text)
                } else if let prefix = value["prefix"], let address = prefix["addr"]?.string, let length = prefix["len"]?.int {
                    network = try? IPNetwork.parse("\(address)/\(length)")
                }
                if let network {
                    result.append((network, UInt64(counter?["packets"]?.int ?? 0), UInt64(counter?["bytes"]?.int ?? 0)))
                }
            }
        }
        return result
    }

    /// The elements of an address set with their counters, straight from netlink (fast for large sets).
    func listAddressSet(_ fullName: String) throws -> [(network: IPNetwork, packets: UInt64, bytes: UInt64)] {
        try listElements(fullName).compactMap { element in
            guard element.key.count == 4 || element.key.count == 16 else { return nil }
            return (IPNetwork(bytes: element.key, prefix: element.key.count * 8), element.counts.packets, element.counts.bytes)
        }
    }

    /// A set's elements as raw keys (an address, or two concatenated) with their counters and time left.
    private func listElements(_ fullName: String) throws -> [(key: [UInt8], counts: weir_nft_counts)] {
        var keys: UnsafeMutablePointer<weir_nft_key>?
        var counts: UnsafeMutablePointer<weir_nft_counts>?
        var count = 0
        if weir_nft_list_elements(NftNames.inetFamily, NftNames.table, fullName, &keys, &counts, &count) < 0 {
            throw NftError(description: String(cString: weir_nft_last_error()))
        }
        defer { free(keys); free(counts) }
        return (0..<count).map { index in
            var key = keys![index]
            let length = Int(key.len)
            return (withUnsafeBytes(of: &key.bytes) { Array($0.prefix(length)) }, counts![index])
        }
    }

    /// A named counter's packets and bytes.
    func counter(owner: String, _ name: String) throws -> (packets: Int, bytes: Int) {
        let output = try run([["list": ["counter": ["family": .string(NftNames.family), "table": .string(NftNames.table), "name": .string(NftNames.full(owner, name))]]]])
        for item in try NftJSON.parse(output)["nftables"]?.array ?? [] {
            if let counter = item["counter"] { return (counter["packets"]?.int ?? 0, counter["bytes"]?.int ?? 0) }
        }
        return (0, 0)
    }

    // MARK: - Applying

    /// Takes `owner`'s objects to `desired`: one libnftables batch for structure, then one netlink batch for
    /// address elements. When the second fails, the first is undone; either way the error is thrown and the
    /// table is as it was.
    func apply(owner: String, _ desired: NftOwnerState) throws -> NftPlan {
        try operations.withLock { try applyLocked(owner: owner, desired) }
    }

    private func applyLocked(owner: String, _ desired: NftOwnerState) throws -> NftPlan {
        let started = ContinuousClock.now
        let current = try currentState(owner)
        let plan = NftPlan(owner: owner, from: current, to: desired)
        logger.debug("planned", metadata: ["pipeline": "\(owner)", "took": "\(ContinuousClock.now - started)"])
        if !plan.commands.isEmpty {
            do {
                try run(plan.commands)
            } catch {
                forget(owner)  // the kernel may not be what we thought
                throw error
            }
        }
        do {
            try changeAddresses(owner: owner, plan.addressChanges)
        } catch {
            if !plan.commands.isEmpty {
                // The structure went in: put the previous one back. New and recreated sets are empty at this point.
                var afterStructure = desired
                afterStructure.addresses = desired.addresses.mapValues { _ in [] }
                for (name, addresses) in current.addresses where desired.sets[name] != nil && !Self.recreated(name, current, desired) {
                    afterStructure.addresses[name] = addresses
                }
                do {
                    let undo = NftPlan(owner: owner, from: afterStructure, to: current)
                    try run(undo.commands)
                    try changeAddresses(owner: owner, undo.addressChanges)
                } catch {
                    logger.error("could not undo a partly applied change", metadata: ["pipeline": "\(owner)", "error": "\(error)"])
                }
            }
            forget(owner)
            throw error
        }
        applied.withLockedValue { $0[owner] = desired }
        return plan
    }

    private static func recreated(_ set: String, _ current: NftOwnerState, _ desired: NftOwnerState) -> Bool {
        guard let before = current.sets[set], let after = desired.sets[set] else { return false }
        return before != after
    }

    /// Adds and removes addresses of `owner`'s address sets in one netlink transaction.
    func changeAddresses(owner: String, _ changes: [(set: String, add: [IPNetwork], remove: [IPNetwork])]) throws {
        try changeElements(owner: owner, changes.map { ($0.set, $0.add.map { Self.key($0.bytes) }, nil, $0.remove.map { Self.key($0.bytes) }) })
    }

    /// One element change: keys added (with their timeouts in milliseconds, for sets that have timeouts) and removed.
    typealias ElementChange = (set: String, add: [weir_nft_key], timeoutsMs: [UInt64]?, remove: [weir_nft_key])

    /// Adds and removes elements of `owner`'s hash sets in one netlink transaction: all of it or none.
    func changeElements(owner: String, _ changes: [ElementChange]) throws {
        guard !changes.isEmpty else { return }
        let names = changes.map { NftNames.full(owner, $0.set) }
        let result: Int32 = withCStrings(names) { cNames in
            var specs: [weir_nft_set_change] = []
            var storage: [(UnsafeMutableBufferPointer<weir_nft_key>, UnsafeMutableBufferPointer<weir_nft_key>, UnsafeMutableBufferPointer<UInt64>?)] = []
            defer { for (a, r, t) in storage { a.deallocate(); r.deallocate(); t?.deallocate() } }
            for (index, change) in changes.enumerated() {
                let a = UnsafeMutableBufferPointer<weir_nft_key>.allocate(capacity: max(1, change.add.count))
                let r = UnsafeMutableBufferPointer<weir_nft_key>.allocate(capacity: max(1, change.remove.count))
                _ = a.initialize(from: change.add)
                _ = r.initialize(from: change.remove)
                let t = change.timeoutsMs.map { timeouts in
                    let buffer = UnsafeMutableBufferPointer<UInt64>.allocate(capacity: max(1, timeouts.count))
                    _ = buffer.initialize(from: timeouts)
                    return buffer
                }
                storage.append((a, r, t))
                specs.append(weir_nft_set_change(
                    set: cNames[index], add: a.baseAddress, add_count: change.add.count, remove: r.baseAddress, remove_count: change.remove.count,
                    add_timeouts_ms: t.map { UnsafePointer($0.baseAddress!) }))
            }
            return specs.withUnsafeBufferPointer { weir_nft_change_elements(NftNames.inetFamily, NftNames.table, $0.baseAddress, $0.count) }
        }
        if result < 0 { throw NftError(description: String(cString: weir_nft_last_error())) }
    }

    /// The elements of a set as raw keys, with the milliseconds each has left (0: no timeout).
    func listKeys(owner: String, _ set: String) throws -> [(key: [UInt8], expiresMs: UInt64)] {
        try listElements(NftNames.full(owner, set)).map { ($0.key, $0.counts.expires_ms) }
    }

    /// Applies an address-set change to the remembered state after `changeAddresses` succeeded.
    func recordAddresses(owner: String, _ addresses: [String: Set<IPNetwork>]) {
        applied.withLockedValue { states in
            for (set, value) in addresses { states[owner]?.addresses[set] = value }
        }
    }

    /// A set key of up to 32 bytes (an address, or two concatenated).
    static func key(_ bytes: [UInt8]) -> weir_nft_key {
        var key = weir_nft_key()
        key.len = UInt8(bytes.count)
        withUnsafeMutableBytes(of: &key.bytes) { $0.copyBytes(from: bytes) }
        return key
    }

    /// The owner's state as remembered, or listed from the kernel when not known (first start, after an error).
    func currentState(_ owner: String) throws -> NftOwnerState {
        if let known = applied.withLockedValue({ $0[owner] }) { return known }
        let listed = try listOwners()[owner] ?? NftOwnerState()
        applied.withLockedValue { $0[owner] = listed }
        return listed
    }

    func forget(_ owner: String) { _ = applied.withLockedValue { $0.removeValue(forKey: owner) } }

    /// Deletes every object of `owner`.
    func remove(owner: String) throws {
        try operations.withLock { try removeLocked(owner: owner, current: try currentState(owner)) }
    }

    private func removeLocked(owner: String, current: NftOwnerState) throws {
        try run(NftPlan(owner: owner, from: current, to: NftOwnerState()).commands)
        forget(owner)
    }

    /// Removes the objects of owners not in `keeping`; the whole table when nobody is left.
    func sweep(keeping: Set<String>) {
        operations.withLock { sweepLocked(keeping: keeping) }
    }

    private func sweepLocked(keeping: Set<String>) {
        do {
            let owners = try listOwners()
            if keeping.isEmpty {
                // No stage runs: the table goes (a missing table is fine).
                if (try? run([["delete": ["table": ["family": .string(NftNames.family), "name": .string(NftNames.table)]]]])) != nil {
                    logger.info("removed the nftables table: no enforce.nftables stage runs")
                }
                applied.withLockedValue { $0 = [:] }
                return
            }
            for owner in owners.keys.sorted() where !keeping.contains(owner) {
                try removeLocked(owner: owner, current: owners[owner]!)
                logger.info("removed nftables objects nothing owns", metadata: ["owner": "\(owner)"])
            }
        } catch {
            logger.error("sweeping the nftables table failed", metadata: ["error": "\(error)"])
        }
    }
}

/// Runs `body` with C copies of `strings`.
private func withCStrings<T>(_ strings: [String], _ body: ([UnsafePointer<CChar>?]) -> T) -> T {
    let copies = strings.map { strdup($0) }
    defer { copies.forEach { free($0) } }
    return body(copies.map { UnsafePointer($0) })
}
