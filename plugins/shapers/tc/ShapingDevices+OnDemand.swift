import Foundation
import Logging
import WeirCore

/// On-demand classes: clients (or marks) the classifier could not place get a class within 200 ms, and classes
/// idle past idle_timeout are removed — except the clients client_rates names, which keep theirs.
extension ShapingDevices {
    func startPolling() {
        guard poller == nil else { return }
        poller = Task { [weak self] in
            var tick = 0
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(200))
                guard let self else { return }
                tick += 1
                self.pollOnce(expire: tick % 10 == 0)
            }
        }
    }

    /// Creates classes for clients (or marks) the classifier reported, and removes those idle too long.
    func pollOnce(expire: Bool) {
        lock.withLock {
            for (name, classifier) in classifiers {
                guard var record = records[name], record.owners.values.contains(where: { $0.shape.hasDynamicClasses }),
                    let ifindex = TrafficControl.index(of: record.device)
                else { continue }
                var changed = false
                var indexes: [String: ClientRateIndex] = [:]
                for (scope, key) in classifier.takeMisses() {
                    guard let (owner, entry) = record.owners.first(where: { $0.value.scopeID == scope }), entry.shape.hasDynamicClasses,
                        entry.dynamic.count < entry.shape.maxDynamic, entry.dynamic[key.classKey] == nil
                    else { continue }
                    do {
                        var updated = entry
                        let minor = try allocateMinor(record, entry)
                        updated.minors[key.classKey] = minor
                        updated.dynamic[key.classKey] = key
                        if indexes[owner] == nil { indexes[owner] = entry.shape.clientRateIndex }
                        let spec = entry.shape.dynamicClass(key, rates: indexes[owner])
                        let htb = HTBClass(minor: minor, parentMinor: entry.minors["total"], rate: spec.rate, ceil: spec.ceil, isLeaf: true)
                        try TrafficControl.setClass(ifindex, htb, create: true)
                        try addLeaf(ifindex, htb)
                        try classifier.setDynamic(scope: scope, key, classID: TrafficControl.classID(minor))
                        record.owners[owner] = updated
                        changed = true
                    } catch {
                        logger.warning("adding a class for \(key.label) failed", metadata: ["pipeline": "\(owner)", "error": "\(error)"])
                    }
                }
                if expire { changed = expireIdle(name, &record, ifindex: ifindex, classifier: classifier) || changed }
                if changed {
                    records[name] = record
                    try? saveRecord(name, record)
                }
            }
        }
    }

    private func expireIdle(_ name: String, _ record: inout DeviceRecord, ifindex: Int32, classifier: ShapeClassifier) -> Bool {
        guard let classes = try? TrafficControl.classes(ifindex) else { return false }
        let bytes = Dictionary(classes.filter { $0.major == TrafficControl.rootMajor }.map { ($0.minor, $0.bytes) }) { a, _ in a }
        let now = ContinuousClock.now
        var seen = idle[name] ?? [:]
        var changed = false
        for (owner, entry) in record.owners where entry.shape.hasDynamicClasses {
            var updated = entry
            let configured = Set(entry.shape.configuredClients)
            for (key, dynamic) in entry.dynamic where !configured.contains(dynamic) {
                guard let minor = entry.minors[key] else { continue }
                let current = bytes[minor] ?? 0
                if let last = seen[minor], last.bytes == current {
                    guard now - last.since >= .seconds(entry.shape.idleSeconds) else { continue }
                    try? classifier.deleteDynamic(scope: entry.scopeID, dynamic)
                    try? TrafficControl.deleteClass(
                        ifindex, HTBClass(minor: minor, parentMinor: entry.minors["total"], rate: 0, ceil: 0, isLeaf: true))
                    updated.minors[key] = nil
                    updated.dynamic[key] = nil
                    seen[minor] = nil
                    changed = true
                    logger.info("removed an idle class", metadata: ["pipeline": "\(owner)", "class": "\(dynamic.label)"])
                } else {
                    seen[minor] = (current, now)
                }
            }
            record.owners[owner] = updated
        }
        idle[name] = seen
        return changed
    }
}
