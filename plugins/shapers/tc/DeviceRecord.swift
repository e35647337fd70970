import WeirCore

/// What weir set up on one device and for whom, saved in `state_dir/tc/INTERFACE.SIDE.json` before the kernel
/// is changed, so a restarted agent (or one that crashed) knows which classes are its own and what to undo.
struct DeviceRecord: Codable, Sendable {
    var interface: String
    var side: ShapeSide
    /// Ingress: the IFB device weir created for the interface.
    var ifb: String?
    /// Ingress: weir added the interface's clsact qdisc (removed again when nothing else uses it).
    var addedClsact = false
    var owners: [String: OwnerRecord] = [:]

    struct OwnerRecord: Codable, Sendable {
        var shape: StageShape
        /// Class key → minor number under weir's root.
        var minors: [String: UInt16] = [:]
        /// On-demand classes: class key → the client or mark.
        var dynamic: [String: DynamicKey] = [:]

        var scopeID: UInt16 { minors["total"] ?? 0 }

        func classID(_ key: String) -> UInt32? { minors[key].map(TrafficControl.classID) }

        func spec(_ key: String) -> ClassSpec? {
            shape.classes.first { $0.key == key } ?? dynamic[key].map { shape.dynamicClass($0) }
        }

        /// Every class's spec by minor number (client_rates indexed once, not searched per class).
        var specs: [UInt16: ClassSpec] {
            let named = Dictionary(shape.classes.map { ($0.key, $0) }) { first, _ in first }
            let rates = shape.clientRateIndex
            return Dictionary(minors.compactMap { key, minor in
                (named[key] ?? dynamic[key].map { shape.dynamicClass($0, rates: rates) }).map { (minor, $0) }
            }) { first, _ in first }
        }

        /// Every class the stage wants, with minor numbers.
        var htbClasses: [HTBClass] {
            let specs = specs
            return minors.compactMap { key, minor in
                guard let spec = specs[minor] else { return nil }
                // A stage's top class hangs under the device's link class.
                return HTBClass(
                    minor: minor, parentMinor: spec.parent.flatMap { minors[$0] } ?? LinkClass.minor, rate: spec.rate, ceil: spec.ceil,
                    isLeaf: spec.isLeaf)
            }
        }
    }

    var device: String { side == .egress ? interface : (ifb ?? Self.ifbName(interface)) }

    /// `wi-eth0`: IFNAMSIZ leaves room for 12 characters of the interface's name; longer names get a
    /// checksum of the name instead (the same in every run, unlike Swift's seeded `hashValue`).
    static func ifbName(_ interface: String) -> String {
        guard interface.utf8.count > 12 else { return "wi-" + interface }
        let fnv = interface.utf8.reduce(UInt32(2_166_136_261)) { ($0 ^ UInt32($1)) &* 16_777_619 }
        return "wi-" + String(fnv % 1_000_000_000)
    }
}

/// One class's counters, for the metrics.
struct ClassReading: Sendable {
    var label: String
    var bytes: UInt64
    var packets: UInt64
    var drops: UInt32
    var overlimits: UInt32
    var rate: UInt64
    var ceil: UInt64
}

extension DeviceRecord {
    /// `count` minor numbers no owner uses, found in one pass (a VPN's thousands of named clients at once);
    /// nil when the device has too few left. `entry`: an owner's record not yet saved in `owners`. Leaf queues
    /// take the class's minor as their major, so minors stay below weir's root major.
    func freeMinors(_ count: Int, besides entry: OwnerRecord) -> [UInt16]? {
        guard count > 0 else { return [] }
        var used = Set(entry.minors.values)
        for other in owners.values { used.formUnion(other.minors.values) }
        var free: [UInt16] = []
        for minor in (LinkClass.minor + 1)..<UInt16(TrafficControl.rootMajor) where !used.contains(minor) {
            free.append(minor)
            if free.count == count { return free }
        }
        return nil
    }
}

/// The class `7765:1` at the top of each device's tree: the link.
enum LinkClass {
    static let minor: UInt16 = 1

    /// The interface's speed (`/sys/class/net/NAME/speed`, Mbit/s) when it reports one; virtual devices
    /// without one (WireGuard, tun) get the sum of the stages' ceilings, at least 1mbit.
    static func rate(interface: String, ceilings: [UInt64]) -> UInt64 {
        if let text = try? String(contentsOfFile: "/sys/class/net/\(interface)/speed", encoding: .utf8),
            let mbit = Int64(text.trimmingCharacters(in: .whitespacesAndNewlines)), mbit > 0
        {
            return UInt64(mbit) * 125_000
        }
        return max(ceilings.reduce(0, +), 125_000)
    }
}
