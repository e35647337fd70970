import Foundation
import Logging
import NIOConcurrencyHelpers
import WeirCore

/// weir's HTB trees, one per shaped device, shared by every `shape.tc` stage of the agent. Each device has one
/// root qdisc (`7765:`), one classifier and one record; each stage (by pipeline) owns a top class with its
/// classes beneath. All operations are serialised: the kernel objects of a device are read, planned and
/// changed as one step.
final class ShapingDevices: @unchecked Sendable {
    static let shared = ShapingDevices()

    // Not private where the on-demand classes (ShapingDevices+OnDemand.swift) use them too.
    let lock = NIOLock()
    var records: [String: DeviceRecord] = [:]  // by "interface.side"
    var classifiers: [String: ShapeClassifier] = [:]
    /// The ifindex each device's classifier is attached to: a device deleted and created again has a new one.
    private var classifierAttachments: [String: Int32] = [:]
    /// Ingress redirects checked in this process: the interface's ifindex at the time, by interface name.
    private var redirects: [String: Int32] = [:]
    var idle: [String: [UInt16: (bytes: UInt64, since: ContinuousClock.Instant)]] = [:]
    var poller: Task<Void, Never>?
    private var stateDirectory = "/var/lib/weir"
    private var leafKind: LeafKind?
    let logger = Logger(label: "weir.shape.tc")

    struct ShapeError: Error, CustomStringConvertible {
        let description: String
    }

    private static func name(_ interface: String, _ side: ShapeSide) -> String { "\(interface).\(side.rawValue)" }

    private func stateFile(_ name: String) -> String { "\(stateDirectory)/tc/\(name).json" }

    // MARK: - Stages

    /// Makes the kernel match `shape` for `owner` on the device; unchanged classes are left alone.
    func apply(owner: String, shape: StageShape, interface: String, side: ShapeSide, stateDirectory: String) throws {
        try lock.withLock {
            self.stateDirectory = stateDirectory
            let name = Self.name(interface, side)
            var record = try loadRecord(name) ?? DeviceRecord(interface: interface, side: side)
            if let other = record.owners.first(where: {
                $0.key != owner && $0.value.shape.scopeProtocol == shape.scopeProtocol && $0.value.shape.scopePort == shape.scopePort
            }) {
                throw ShapeError(
                    description: "\(interface) \(side.rawValue): \(shape.scopeDescription) is already shaped by pipeline \"\(other.key)\"")
            }
            let previous = record.owners[owner]
            var entry = previous ?? DeviceRecord.OwnerRecord(shape: shape)
            if entry.shape.per != shape.per { entry.dynamic = [:] }
            entry.shape = shape
            // A client now in a named entry's class gives up the class it had of its own.
            let shared = Set(shape.sharedMembers.map(\.client.classKey))
            entry.dynamic = entry.dynamic.filter { !shared.contains($0.key) }
            for client in shape.configuredClients where entry.dynamic[client.classKey] == nil && entry.dynamic.count < shape.maxDynamic {
                entry.dynamic[client.classKey] = client
            }
            let wanted = Set(shape.classes.map(\.key)).union(entry.dynamic.keys)
            entry.minors = entry.minors.filter { wanted.contains($0.key) }
            let unnumbered = shape.classes.map(\.key).filter { entry.minors[$0] == nil } + entry.dynamic.keys.filter { entry.minors[$0] == nil }.sorted()
            for (key, minor) in zip(unnumbered, try allocateMinors(unnumbered.count, record, entry)) { entry.minors[key] = minor }
            let owned = Set((previous?.minors.values).map(Array.init) ?? [])
            record.owners[owner] = entry
            try saveRecord(name, record)  // before the kernel changes: a crash in between is swept later
            do {
                try reconcile(name, &record, owner: owner, owned: owned, previousShape: previous?.shape)
            } catch {
                // Put back what was there; the supervisor restarts the previous stage, which applies it again.
                logger.error("shaping \(name) failed; restoring", metadata: ["pipeline": "\(owner)", "error": "\(error)"])
                var restored = record
                restored.owners[owner] = previous
                if previous == nil { try? removeOwnerLocked(name, &restored, owner: owner, entry: entry) }
                else { try? saveRecord(name, restored) }
                records[name] = restored
                throw error
            }
            records[name] = record
            if shape.hasDynamicClasses { startPolling() }
        }
    }

    /// Whether the device still carries what `apply` installed: neither the interface nor its IFB was created
    /// again since (a new ifindex), and weir's root qdisc and `owner`'s classes are in place. False means `apply` has to run again.
    func isIntact(owner: String, interface: String, side: ShapeSide) -> Bool {
        lock.withLock {
            let name = Self.name(interface, side)
            guard let record = records[name], let entry = record.owners[owner], let ifindex = TrafficControl.index(of: record.device),
                classifierAttachments[name] == ifindex
            else { return false }
            if side == .ingress, redirects[interface] == nil || redirects[interface] != TrafficControl.index(of: interface) { return false }
            let root = (try? TrafficControl.qdiscs(ifindex))?.first { $0.parent == TrafficControl.rootParent }
            guard root?.handle == TrafficControl.rootHandle, root?.kind == "htb", let classes = try? TrafficControl.htbClasses(ifindex) else { return false }
            // Each owner checks its own classes: the first to repair a recreated device puts back the root only.
            return entry.minors.values.allSatisfy { classes[$0] != nil }
        }
    }

    /// Removes `owner`'s classes from the device; the device's own state goes with the last stage.
    func remove(owner: String, interface: String, side: ShapeSide, stateDirectory: String) throws {
        try lock.withLock {
            self.stateDirectory = stateDirectory
            let name = Self.name(interface, side)
            guard var record = try loadRecord(name), let entry = record.owners[owner] else { return }
            try removeOwnerLocked(name, &record, owner: owner, entry: entry)
        }
    }

    /// Removes every owner not in `keeping`, on every device with a record.
    func sweep(keeping: Set<String>, stateDirectory: String) {
        forEachRecord(stateDirectory: stateDirectory) { name, record in
            let empty = record.owners.isEmpty  // left so by a crash between saving and tearing down
            for (owner, entry) in record.owners where !keeping.contains(owner) {
                logger.info("removing the classes of a pipeline that no longer shapes", metadata: ["pipeline": "\(owner)", "device": "\(name)"])
                try removeOwnerLocked(name, &record, owner: owner, entry: entry)
            }
            if empty { try teardown(name, record) }
        }
    }

    /// Removes `owner` from the devices (`interface.side`) not in `keeping`.
    func removeElsewhere(owner: String, keeping: Set<String>, stateDirectory: String) {
        forEachRecord(stateDirectory: stateDirectory) { name, record in
            guard !keeping.contains(name), let entry = record.owners[owner] else { return }
            try removeOwnerLocked(name, &record, owner: owner, entry: entry)
        }
    }

    private func forEachRecord(stateDirectory: String, _ body: (String, inout DeviceRecord) throws -> Void) {
        lock.withLock {
            self.stateDirectory = stateDirectory
            let directory = "\(stateDirectory)/tc"
            StateFiles.removeInterruptedWrites(in: directory)
            let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
            for file in files where file.hasSuffix(".json") {
                let name = String(file.dropLast(5))
                do {
                    guard var record = try loadRecord(name) else { continue }
                    try body(name, &record)
                } catch {
                    logger.error("cleaning up shaped device \(name) failed", metadata: ["error": "\(error)"])
                }
            }
        }
    }

    /// The counters of `owner`'s classes on the device.
    func readings(owner: String, interface: String, side: ShapeSide) -> [ClassReading] {
        lock.withLock {
            let name = Self.name(interface, side)
            guard let record = records[name], let entry = record.owners[owner], let ifindex = TrafficControl.index(of: record.device),
                let classes = try? TrafficControl.classes(ifindex)
            else { return [] }
            let labels = entry.specs
            return classes.compactMap { object in
                guard object.major == TrafficControl.rootMajor, let spec = labels[object.minor] else { return nil }
                return ClassReading(
                    label: spec.label, bytes: object.bytes, packets: object.packets, drops: object.drops,
                    overlimits: object.overlimits, rate: spec.rate, ceil: spec.ceil)
            }
        }
    }

    // MARK: - Kernel

    private func reconcile(
        _ name: String, _ record: inout DeviceRecord, owner: String, owned: Set<UInt16>, previousShape: StageShape?
    ) throws {
        let ifindex = try prepareDevice(&record)
        try saveRecord(name, record)
        guard let entry = record.owners[owner] else { return }
        let actual = try TrafficControl.htbClasses(ifindex)
        try ensureLinkClass(record, ifindex: ifindex, current: actual[LinkClass.minor])
        let plan = ClassPlan.make(desired: entry.htbClasses, actual: actual, owned: owned)
        try run(plan, ifindex: ifindex)
        try ensureLeaves(ifindex, entry)
        let classifier = try ensureClassifier(name, record, ifindex: ifindex)
        if let previousShape, previousShape.scopeProtocol != entry.shape.scopeProtocol || previousShape.scopePort != entry.shape.scopePort {
            try classifier.deleteScope(previousShape)
        }
        try classifier.setScope(entry.shape, id: entry.scopeID, classID: entry.classID)
        try setClients(classifier, entry)
        // Clients that left a named entry (and got no class of their own) are unplaced: their next packet asks for one.
        let placed = Set(entry.shape.sharedMembers.map(\.client)).union(entry.dynamic.values)
        for (_, client) in previousShape?.sharedMembers ?? [] where !placed.contains(client) {
            try? classifier.deleteDynamic(scope: entry.scopeID, client)
        }
        if !plan.isEmpty {
            logger.info("shaping updated", metadata: ["pipeline": "\(owner)", "device": "\(name)", "changes": "\(plan.steps.count)"])
        }
    }

    /// The device's ifindex with weir's root qdisc in place (and for ingress the IFB and the redirect to it).
    private func prepareDevice(_ record: inout DeviceRecord) throws -> Int32 {
        guard let interfaceIndex = TrafficControl.index(of: record.interface) else {
            throw ShapeError(description: "interface \"\(record.interface)\" does not exist")
        }
        var ifindex = interfaceIndex
        if record.side == .ingress {
            let ifb = record.ifb ?? DeviceRecord.ifbName(record.interface)
            if TrafficControl.index(of: ifb) == nil {
                do { try TrafficControl.createIFB(ifb) } catch {
                    throw ShapeError(
                        description: "ingress shaping of \(record.interface) needs an IFB device, and creating \(ifb) failed: \(error)"
                            + (error.code == EOPNOTSUPP || error.code == ENOENT ? " (the kernel lacks CONFIG_IFB)" : ""))
                }
            }
            record.ifb = ifb
            guard let ifbIndex = TrafficControl.index(of: ifb) else { throw ShapeError(description: "the IFB device \(ifb) vanished") }
            ifindex = ifbIndex
            try ensureRedirect(&record, interfaceIndex: interfaceIndex, to: ifbIndex)
        }
        let root = try TrafficControl.qdiscs(ifindex).first { $0.parent == TrafficControl.rootParent }
        if let root, root.handle == TrafficControl.rootHandle, root.kind == "htb" { return ifindex }
        if let root, root.major != 0 {
            throw ShapeError(
                description: "\(record.device) has a root qdisc \(root.kind) \(String(root.major, radix: 16)): that weir did not add; "
                    + "shape.tc leaves it alone (remove it with `tc qdisc del dev \(record.device) root` to let weir shape this interface)")
        }
        do { try TrafficControl.addRoot(ifindex) } catch {
            throw ShapeError(
                description: "adding weir's HTB qdisc to \(record.device) failed: \(error)"
                    + (error.code == ENOENT ? " (the kernel lacks the HTB qdisc, CONFIG_NET_SCH_HTB)" : ""))
        }
        logger.info("added weir's HTB root qdisc", metadata: ["device": "\(record.device)", "replaced": "\(root?.kind ?? "none")"])
        return ifindex
    }

    /// Ingress: every packet arriving at the interface is redirected to the IFB, where the HTB tree shapes it.
    /// The filter goes onto the interface's clsact (or ingress) qdisc; weir adds clsact only when neither is there.
    private func ensureRedirect(_ record: inout DeviceRecord, interfaceIndex: Int32, to ifbIndex: Int32) throws {
        let key = record.interface
        if redirects[key] == interfaceIndex { return }
        let qdiscs = try TrafficControl.qdiscs(interfaceIndex)
        let hook: UInt32
        if qdiscs.contains(where: { $0.kind == "clsact" }) {
            hook = TrafficControl.clsactIngressHook
        } else if qdiscs.contains(where: { $0.kind == "ingress" }) {
            hook = TrafficControl.ingressHandle
        } else {
            try TrafficControl.addClsact(interfaceIndex)
            record.addedClsact = true
            hook = TrafficControl.clsactIngressHook
        }
        // Replace rather than add twice: u32 filters get a new handle each time.
        try TrafficControl.deleteFilters(interfaceIndex, parent: hook, priority: TrafficControl.redirectPriority)
        do { try TrafficControl.addRedirect(interfaceIndex, hook: hook, to: ifbIndex) } catch {
            throw ShapeError(
                description: "redirecting \(record.interface)'s ingress to \(record.device) failed: \(error)"
                    + (error.code == ENOENT ? " (the kernel lacks the u32 classifier or the mirred action)" : ""))
        }
        redirects[key] = interfaceIndex
    }

    /// The class every stage's top class hangs under, so stages on one device borrow from each other: its rate
    /// is the link's speed where the interface reports one, else the sum of the stages' ceilings.
    private func ensureLinkClass(_ record: DeviceRecord, ifindex: Int32, current: HTBClass?) throws {
        let rate = LinkClass.rate(interface: record.interface, ceilings: record.owners.values.compactMap { $0.spec("total")?.ceil })
        let want = HTBClass(minor: LinkClass.minor, parentMinor: nil, rate: rate, ceil: rate, isLeaf: false)
        if current?.rate == rate, current?.ceil == rate { return }
        try TrafficControl.setClass(ifindex, want, create: current == nil)
    }

    private func run(_ plan: ClassPlan, ifindex: Int32) throws {
        for step in plan.steps {
            switch step {
            case .delete(let htb): try TrafficControl.deleteClass(ifindex, htb)
            case .create(let htb): try TrafficControl.setClass(ifindex, htb, create: true)
            case .change(let htb):
                try TrafficControl.setClass(ifindex, htb, create: false)
                // A FIFO leaf is sized by the ceiling.
                if htb.isLeaf, leafKind == .bfifo { try addLeaf(ifindex, htb) }
            }
        }
    }

    /// Every leaf class has its queue (a class created by the plan, or whose queue someone deleted).
    /// Every leaf class has its queue, sized for its ceiling: a crash between changing a class and resizing
    /// its FIFO leaves the old size, which only a comparison with the kernel notices.
    private func ensureLeaves(_ ifindex: Int32, _ entry: DeviceRecord.OwnerRecord) throws {
        let queues = Dictionary(try TrafficControl.qdiscs(ifindex).map { ($0.parent, $0) }) { first, _ in first }
        for htb in entry.htbClasses where htb.isLeaf {
            guard let queue = queues[TrafficControl.classID(htb.minor)] else {
                try addLeaf(ifindex, htb)
                continue
            }
            if queue.kind == LeafKind.bfifo.rawValue, queue.limit != LeafKind.bfifo.limit(ceil: htb.ceil) {
                try TrafficControl.addLeaf(ifindex, minor: htb.minor, kind: .bfifo, ceil: htb.ceil)
            }
        }
    }

    func addLeaf(_ ifindex: Int32, _ htb: HTBClass) throws {
        if leafKind == nil {
            let result = Result { () throws(TCError) in try TrafficControl.addLeaf(ifindex, minor: htb.minor, kind: .fqCodel, ceil: htb.ceil) }
            switch result {
            case .success:
                leafKind = .fqCodel
                return
            case .failure(let error) where error.code == ENOENT:
                leafKind = .bfifo
                logger.notice("the kernel has no fq_codel qdisc; leaf classes queue in a byte FIFO sized to 100 ms at their ceiling")
            case .failure(let error):
                throw error
            }
        }
        try TrafficControl.addLeaf(ifindex, minor: htb.minor, kind: leafKind ?? .bfifo, ceil: htb.ceil)
    }

    /// The classifier for the device, loaded and attached once per process; a fresh load gets every owner's
    /// scope and on-demand classes before it replaces the program a previous run left attached.
    private func ensureClassifier(_ name: String, _ record: DeviceRecord, ifindex: Int32) throws -> ShapeClassifier {
        if let classifier = classifiers[name] {
            if classifierAttachments[name] != ifindex {
                // The device was created again: the loaded program (and its scopes) goes onto the new one.
                try attach(classifier, name, record, ifindex: ifindex)
            }
            return classifier
        }
        let classifier: ShapeClassifier
        do { classifier = try ShapeClassifier(side: record.side) } catch {
            throw ShapeError(description: "loading the shape.tc classifier failed: \(error)")
        }
        for entry in record.owners.values {
            try classifier.setScope(entry.shape, id: entry.scopeID, classID: entry.classID)
            try setClients(classifier, entry)
        }
        try attach(classifier, name, record, ifindex: ifindex)
        classifiers[name] = classifier
        return classifier
    }

    /// Places every client that has a class: on-demand and configured ones in their own, named entries' in theirs.
    private func setClients(_ classifier: ShapeClassifier, _ entry: DeviceRecord.OwnerRecord) throws {
        for (key, dynamic) in entry.dynamic {
            if let classID = entry.classID(key) { try classifier.setDynamic(scope: entry.scopeID, dynamic, classID: classID) }
        }
        for (key, client) in entry.shape.sharedMembers {
            if let classID = entry.classID(key) { try classifier.setDynamic(scope: entry.scopeID, client, classID: classID) }
        }
    }

    private func attach(_ classifier: ShapeClassifier, _ name: String, _ record: DeviceRecord, ifindex: Int32) throws {
        do { try TrafficControl.attachClassifier(ifindex, programFD: classifier.programFD) } catch {
            throw ShapeError(
                description: "attaching the classifier to \(record.device) failed: \(error)"
                    + (error.code == ENOENT ? " (the kernel lacks the bpf classifier, CONFIG_NET_CLS_BPF)" : ""))
        }
        classifierAttachments[name] = ifindex
    }

    private func removeOwnerLocked(_ name: String, _ record: inout DeviceRecord, owner: String, entry: DeviceRecord.OwnerRecord) throws {
        if let classifier = classifiers[name] {
            try? classifier.deleteScope(entry.shape)
            for dynamic in entry.dynamic.values { try? classifier.deleteDynamic(scope: entry.scopeID, dynamic) }
            for (_, client) in entry.shape.sharedMembers { try? classifier.deleteDynamic(scope: entry.scopeID, client) }
        }
        let ifindex = TrafficControl.index(of: record.device)
        let actual = try ifindex.map(TrafficControl.htbClasses) ?? [:]
        if let ifindex { try run(ClassPlan.make(desired: [], actual: actual, owned: Set(entry.minors.values)), ifindex: ifindex) }
        record.owners[owner] = nil
        idle[name] = idle[name]?.filter { minor, _ in !entry.minors.values.contains(minor) }
        if record.owners.isEmpty {
            try teardown(name, record)
        } else {
            if let ifindex { try ensureLinkClass(record, ifindex: ifindex, current: actual[LinkClass.minor]) }
            try saveRecord(name, record)
            records[name] = record
        }
    }

    /// Gives the device back as it was: weir's root qdisc deleted (the kernel puts its default back), and for
    /// ingress the redirect, the clsact qdisc weir added (when nothing else uses it) and the IFB removed.
    private func teardown(_ name: String, _ record: DeviceRecord) throws {
        classifiers[name] = nil
        classifierAttachments[name] = nil
        if let ifindex = TrafficControl.index(of: record.device) { try TrafficControl.deleteRoot(ifindex) }
        if record.side == .ingress {
            if let interfaceIndex = TrafficControl.index(of: record.interface) {
                let qdiscs = try TrafficControl.qdiscs(interfaceIndex)
                let isClsact = qdiscs.contains { $0.kind == "clsact" }
                let hook = isClsact ? TrafficControl.clsactIngressHook : TrafficControl.ingressHandle
                try TrafficControl.deleteFilters(interfaceIndex, parent: hook, priority: TrafficControl.redirectPriority)
                if record.addedClsact, isClsact {
                    let remaining =
                        try TrafficControl.filterCount(interfaceIndex, parent: TrafficControl.clsactIngressHook)
                        + TrafficControl.filterCount(interfaceIndex, parent: 0xFFFF_FFF3)
                    if remaining == 0 { try TrafficControl.deleteClsact(interfaceIndex) }
                }
            }
            if let ifb = record.ifb { try TrafficControl.deleteLink(ifb) }
            redirects[record.interface] = nil
        }
        records[name] = nil
        idle[name] = nil
        try? FileManager.default.removeItem(atPath: stateFile(name))
        logger.info("restored the device's qdiscs", metadata: ["device": "\(name)"])
    }

    // MARK: - Minor numbers

    func allocateMinor(_ record: DeviceRecord, _ entry: DeviceRecord.OwnerRecord) throws -> UInt16 {
        try allocateMinors(1, record, entry)[0]
    }

    private func allocateMinors(_ count: Int, _ record: DeviceRecord, _ entry: DeviceRecord.OwnerRecord) throws -> [UInt16] {
        guard let minors = record.freeMinors(count, besides: entry) else {
            throw ShapeError(description: "\(record.device) has no free class numbers left")
        }
        return minors
    }

    // MARK: - State

    private func loadRecord(_ name: String) throws -> DeviceRecord? {
        if let record = records[name] { return record }
        guard let data = FileManager.default.contents(atPath: stateFile(name)) else { return nil }
        do {
            let record = try JSONDecoder().decode(DeviceRecord.self, from: data)
            records[name] = record
            return record
        } catch {
            throw ShapeError(description: "\(stateFile(name)) cannot be read (\(error)); move it away to start afresh")
        }
    }

    func saveRecord(_ name: String, _ record: DeviceRecord) throws {
        try StateFiles.writeJSON(record, to: stateFile(name))
    }
}
