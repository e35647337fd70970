import CWeirBPF
import CWeirNetlink
import Foundation
import Glibc

/// A failed rtnetlink or bpf call, with the C layer's description.
struct TCError: Error, CustomStringConvertible {
    let code: Int32
    let description: String

    static func check(_ result: Int32) throws(TCError) {
        if result < 0 { throw TCError(code: -result, description: String(cString: weir_nft_last_error())) }
    }

    static func checkBPF(_ result: Int32) throws(TCError) {
        if result < 0 { throw TCError(code: -result, description: String(cString: weir_bpf_last_error())) }
    }
}

/// tc objects of one device, through the C layer's rtnetlink calls.
enum TrafficControl {
    /// Major number of weir's HTB root qdisc ("we" in ASCII): `tc qdisc show` lists it as `7765:`.
    static let rootMajor: UInt32 = 0x7765
    static let rootHandle: UInt32 = rootMajor << 16
    static let rootParent: UInt32 = 0xFFFF_FFFF  // TC_H_ROOT
    static let clsactParent: UInt32 = 0xFFFF_FFF1  // TC_H_CLSACT (== TC_H_INGRESS)
    static let ingressHandle: UInt32 = 0xFFFF_0000
    static let clsactIngressHook: UInt32 = 0xFFFF_FFF2  // ffff:fff2
    /// Priority of weir's filters: the classifier under the root, the IFB redirect at the ingress hook
    /// (late, so filters of other tools on the same hook run first).
    static let classifierPriority: UInt16 = 1
    static let redirectPriority: UInt16 = 0x7765

    static func classID(_ minor: UInt16) -> UInt32 { rootHandle | UInt32(minor) }

    struct Object {
        var handle: UInt32
        var parent: UInt32
        var kind: String
        var bytes: UInt64
        var packets: UInt64
        var drops: UInt32
        var overlimits: UInt32
        var rate: UInt64
        var ceil: UInt64
        /// bfifo/pfifo: the queue's limit.
        var limit: UInt32

        var major: UInt32 { handle >> 16 }
        var minor: UInt16 { UInt16(handle & 0xFFFF) }
    }

    static func qdiscs(_ ifindex: Int32) throws(TCError) -> [Object] { try list(ifindex, classes: false) }
    /// weir's HTB classes on the device by minor (leafness is not reported; false).
    static func htbClasses(_ ifindex: Int32) throws -> [UInt16: HTBClass] {
        var result: [UInt16: HTBClass] = [:]
        for object in try classes(ifindex) where object.major == rootMajor && object.kind == "htb" {
            // Classes directly under the qdisc report TC_H_ROOT as their parent.
            let parent: UInt16? = object.parent == rootHandle || object.parent == rootParent ? nil : UInt16(object.parent & 0xFFFF)
            result[object.minor] = HTBClass(minor: object.minor, parentMinor: parent, rate: object.rate, ceil: object.ceil, isLeaf: false)
        }
        return result
    }

    static func classes(_ ifindex: Int32) throws(TCError) -> [Object] { try list(ifindex, classes: true) }

    private static func list(_ ifindex: Int32, classes: Bool) throws(TCError) -> [Object] {
        var pointer: UnsafeMutablePointer<weir_tc_object>?
        var count = 0
        try TCError.check(weir_tc_list(ifindex, classes ? 1 : 0, &pointer, &count))
        defer { free(pointer) }
        return (0..<count).map { index in
            var object = pointer![index]
            let kind = withUnsafeBytes(of: &object.kind) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            return Object(
                handle: object.handle, parent: object.parent, kind: kind, bytes: object.bytes, packets: object.packets,
                drops: object.drops, overlimits: object.overlimits, rate: object.rate, ceil: object.ceil,
                limit: object.limit)
        }
    }

    static func addRoot(_ ifindex: Int32) throws(TCError) {
        // Default class 0 names no class: traffic the classifier does not place goes out unshaped.
        try TCError.check(weir_tc_htb_root(ifindex, rootHandle, 0))
    }

    static func deleteRoot(_ ifindex: Int32) throws(TCError) {
        try TCError.check(weir_tc_delete(ifindex, 0, rootParent, rootHandle))
    }

    static func setClass(_ ifindex: Int32, _ htb: HTBClass, create: Bool) throws(TCError) {
        let parent = htb.parentMinor.map(classID) ?? rootHandle
        try TCError.check(weir_tc_htb_class(ifindex, parent, classID(htb.minor), htb.rate, htb.ceil, 0, create ? 1 : 0))
    }

    static func deleteClass(_ ifindex: Int32, _ htb: HTBClass) throws(TCError) {
        let parent = htb.parentMinor.map(classID) ?? rootHandle
        try TCError.check(weir_tc_delete(ifindex, 1, parent, classID(htb.minor)))
    }

    /// The leaf qdisc of a class: handle `MINOR:`.
    static func addLeaf(_ ifindex: Int32, minor: UInt16, kind: LeafKind, ceil: UInt64) throws(TCError) {
        try TCError.check(weir_tc_leaf(ifindex, classID(minor), UInt32(minor) << 16, kind.rawValue, kind.limit(ceil: ceil)))
    }

    static func attachClassifier(_ ifindex: Int32, programFD: Int32) throws(TCError) {
        try TCError.check(weir_tc_bpf_filter(ifindex, rootHandle, classifierPriority, programFD, "weir_shape"))
    }

    static func deleteFilters(_ ifindex: Int32, parent: UInt32, priority: UInt16) throws(TCError) {
        try TCError.check(weir_tc_filter_delete(ifindex, parent, priority))
    }

    static func filterCount(_ ifindex: Int32, parent: UInt32) throws(TCError) -> Int {
        var count = 0
        try TCError.check(weir_tc_filter_count(ifindex, parent, &count))
        return count
    }

    static func addRedirect(_ ifindex: Int32, hook: UInt32, to target: Int32) throws(TCError) {
        try TCError.check(weir_tc_redirect_filter(ifindex, hook, redirectPriority, target))
    }

    static func addClsact(_ ifindex: Int32) throws(TCError) {
        try TCError.check(weir_tc_qdisc_add(ifindex, clsactParent, ingressHandle, "clsact"))
    }

    static func deleteClsact(_ ifindex: Int32) throws(TCError) {
        try TCError.check(weir_tc_delete(ifindex, 0, clsactParent, ingressHandle))
    }

    static func createIFB(_ name: String) throws(TCError) { try TCError.check(weir_link_ifb_create(name)) }
    static func deleteLink(_ name: String) throws(TCError) { try TCError.check(weir_link_delete(name)) }

    static func index(of name: String) -> Int32? {
        let index = if_nametoindex(name)
        return index == 0 ? nil : Int32(index)
    }
}

/// The queue under each leaf class. fq_codel keeps queues short and flows fair; kernels built without it
/// get a byte FIFO sized to 100 ms at the class's ceiling, which bounds the delay a full queue adds.
enum LeafKind: String, Sendable {
    case fqCodel = "fq_codel"
    case bfifo

    func limit(ceil: UInt64) -> UInt32 {
        switch self {
        case .fqCodel: 0
        case .bfifo: UInt32(min(max(ceil / 10, 3 * 65536), UInt64(UInt32.max)))
        }
    }
}

/// The compiled `bpf/weir_shape.bpf.c` loaded for one device, with its maps.
///
/// Unchecked Sendable: only used under ShapingDevices' lock.
final class ShapeClassifier: @unchecked Sendable {
    private static let image: [UInt8] = {
        guard let data = Data(base64Encoded: weirShapeObject) else { preconditionFailure("embedded eBPF object is not base64") }
        return Array(data)
    }()

    private var handle: OpaquePointer?

    init(side: ShapeSide) throws(TCError) {
        var config = weir_shape_config()
        config.from_clients = side == .ingress ? 1 : 0
        let handle = Self.image.withUnsafeBytes { image in weir_shape_load(image.baseAddress, image.count, &config) }
        guard let handle else { throw TCError(code: EINVAL, description: String(cString: weir_bpf_last_error())) }
        self.handle = handle
    }

    deinit { if let handle { weir_shape_close(handle) } }

    var programFD: Int32 { weir_shape_program_fd(handle) }

    func setScope(_ shape: StageShape, id: UInt16, classID: (String) -> UInt32?) throws(TCError) {
        var key = weir_shape_scope_key()
        key.protocol = shape.scopeProtocol
        key.port = shape.scopePort
        var scope = weir_shape_scope()
        scope.id = UInt32(id)
        scope.default_classid = classID("default") ?? 0
        scope.per =
            switch shape.per {
            case ShapeTCConfig.Per.clientIP.rawValue: UInt32(WEIR_SHAPE_PER_CLIENT.rawValue)
            case ShapeTCConfig.Per.mark.rawValue: UInt32(WEIR_SHAPE_PER_MARK.rawValue)
            default: UInt32(WEIR_SHAPE_PER_STAGE.rawValue)
            }
        withUnsafeMutableBytes(of: &scope.rules) { buffer in
            let rules = buffer.bindMemory(to: weir_shape_rule.self)
            for (index, rule) in shape.rules.prefix(rules.count).enumerated() {
                var entry = weir_shape_rule()
                entry.classid = classID(rule.classKey) ?? 0
                if let mark = rule.match.mark {
                    entry.mark = mark
                    entry.mark_mask = rule.match.markMask
                }
                if let dscp = rule.match.dscp {
                    entry.dscp = dscp
                    entry.dscp_set = 1
                }
                if let proto = rule.match.proto { entry.protocol = UInt8(proto == "udp" ? IPPROTO_UDP : IPPROTO_TCP) }
                if let ports = rule.match.ports {
                    entry.port_low = UInt16(ports.lowerBound)
                    entry.port_high = UInt16(ports.upperBound)
                }
                rules[index] = entry
            }
        }
        try TCError.checkBPF(weir_map_update(weir_shape_scopes_fd(handle), &key, &scope, 0))
    }

    func deleteScope(_ shape: StageShape) throws(TCError) {
        var key = weir_shape_scope_key()
        key.protocol = shape.scopeProtocol
        key.port = shape.scopePort
        try TCError.checkBPF(weir_map_delete(weir_shape_scopes_fd(handle), &key))
    }

    func setDynamic(scope: UInt16, _ key: DynamicKey, classID: UInt32) throws(TCError) {
        var entry = Self.mapKey(scope: scope, key)
        var value = classID
        try TCError.checkBPF(weir_map_update(weir_shape_dynamic_fd(handle), &entry, &value, 0))
    }

    func deleteDynamic(scope: UInt16, _ key: DynamicKey) throws(TCError) {
        var entry = Self.mapKey(scope: scope, key)
        try TCError.checkBPF(weir_map_delete(weir_shape_dynamic_fd(handle), &entry))
    }

    /// Takes (reads and deletes) the clients and marks the classifier could not place.
    func takeMisses(limit: Int = 4096) -> [(scope: UInt16, key: DynamicKey)] {
        let fd = weir_shape_misses_fd(handle)
        var keys: [weir_shape_dynamic_key] = []
        var current = weir_shape_dynamic_key()
        var next = weir_shape_dynamic_key()
        var first = true
        while keys.count < limit {
            let result = first ? weir_map_next_key(fd, nil, &next) : weir_map_next_key(fd, &current, &next)
            guard result == 0 else { break }
            keys.append(next)
            current = next
            first = false
        }
        for var key in keys { _ = weir_map_delete(fd, &key) }
        return keys.map { entry in
            var entry = entry
            let bytes = withUnsafeBytes(of: &entry.addr) { Array($0) }
            return (UInt16(truncatingIfNeeded: entry.scope), DynamicKey(family: entry.family, bytes: bytes))
        }
    }

    private static func mapKey(scope: UInt16, _ key: DynamicKey) -> weir_shape_dynamic_key {
        var entry = weir_shape_dynamic_key()
        entry.scope = UInt32(scope)
        entry.family = key.family
        withUnsafeMutableBytes(of: &entry.addr) { $0.copyBytes(from: key.bytes.prefix(16)) }
        return entry
    }
}
