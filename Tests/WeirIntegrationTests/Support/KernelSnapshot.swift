import Foundation

/// Everything Weir's kernel stages leave in a network namespace, as sorted lines that compare equal for two
/// namespaces in the same state: Weir's nftables table, the qdiscs/classes/filters of the given interfaces
/// and their IFB devices, tcx programs, routes with Weir's protocol, pins and the state directory's files.
///
/// Normalised: interface names become their roles (`IN`, `OUT`, `wi-OUT`); counters, kernel object ids,
/// handles the kernel numbers by history (HTB minors weir allocates, u32 and action indexes), rule comments
/// (a digest of the rule, interface names included) and the kernel's default root qdiscs are left out. What
/// remains is what the configuration decides.
struct KernelSnapshot: Equatable, CustomStringConvertible {
    let lines: [String]

    var description: String { lines.joined(separator: "\n") }

    /// Lines in one snapshot and not the other, each prefixed with `-` (only in self) or `+` (only in other).
    func difference(_ other: KernelSnapshot) -> [String] {
        let mine = Set(lines), theirs = Set(other.lines)
        return lines.filter { !theirs.contains($0) }.map { "- " + $0 } + other.lines.filter { !mine.contains($0) }.map { "+ " + $0 }
    }

    /// `interfaces` maps each interface of the namespace to its role name.
    static func take(
        namespace ns: String, interfaces: [String: String], pinRoot: String?, stateDirectory: String
    ) throws -> KernelSnapshot {
        // IFB devices are named after their interface (`wi-` + the name) and normalise with it.
        let names = interfaces
        func normalize(_ text: String) -> String {
            var text = text
            // Longest names first: one may contain another.
            for (name, role) in names.sorted(by: { $0.key.count > $1.key.count }) { text = text.replacingOccurrences(of: name, with: role) }
            return text
        }
        func run(_ arguments: [String]) -> String {
            (try? command([which("ip")!, "netns", "exec", ns] + arguments))?.output ?? ""
        }
        var lines: [String] = []

        lines += nftables(run([which("nft")!, "-j", "list", "table", "inet", "weir"])).map { "nft " + normalize($0) }

        let ifbs = run(["ip", "-o", "link", "show", "type", "ifb"]).split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: ":", maxSplits: 2)
            return fields.count > 1 ? fields[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first.map(String.init) : nil
        }
        lines += ifbs.map { "ifb " + normalize($0) }
        for device in interfaces.keys.sorted() + ifbs.sorted() {
            for (kind, arguments) in [
                ("qdisc", ["qdisc", "show", "dev", device]), ("class", ["class", "show", "dev", device]),
                ("filter", ["filter", "show", "dev", device]), ("filter ingress", ["filter", "show", "dev", device, "ingress"]),
                ("filter egress", ["filter", "show", "dev", device, "egress"]),
            ] {
                for line in tcLines(run(["tc"] + arguments)) { lines.append("tc \(kind) \(normalize(device)): \(normalize(line))") }
            }
        }
        for line in run([python3, "-c", tcxPrograms] + interfaces.keys.sorted()).split(separator: "\n") {
            lines.append(normalize(String(line)))
        }
        for family in ["-4", "-6"] {
            for line in run(["ip", family, "route", "show", "table", "all", "proto", "87"]).split(separator: "\n") {
                lines.append("route " + normalize(String(line)))
            }
        }
        if let pinRoot { lines += files(under: pinRoot).map { "pin " + normalize($0) } }
        for folder in ["nftables", "tc"] {
            lines += files(under: stateDirectory + "/" + folder).map { "state \(folder)/" + normalize($0) }
        }
        return KernelSnapshot(lines: lines.sorted())
    }

    /// argv: interfaces. Prints the programs attached to each at tcx ingress and egress ("tcx eth0 ingress:
    /// weir_count_in"). bpftool 7.1 (Debian 12) lists tcx links without their interface, so this asks the
    /// kernel directly: BPF_PROG_QUERY, then each program's name by id.
    static let tcxPrograms = """
        import ctypes, os, platform, socket, struct, sys
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_BPF = {"x86_64": 321, "aarch64": 280}[platform.machine()]
        PROG_QUERY, PROG_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD = 16, 13, 15
        def bpf(cmd, attr):
            buffer = ctypes.create_string_buffer(attr, 128)
            return libc.syscall(SYS_BPF, cmd, buffer, 128), buffer
        for name in sys.argv[1:]:
            index = socket.if_nametoindex(name)
            for attach_type, direction in ((46, "ingress"), (47, "egress")):  # BPF_TCX_INGRESS, BPF_TCX_EGRESS
                ids = (ctypes.c_uint32 * 64)()
                result, attr = bpf(PROG_QUERY, struct.pack("=IIIIQI", index, attach_type, 0, 0, ctypes.addressof(ids), 64))
                if result != 0:
                    print(f"tcx {name} {direction}: query failed, errno {ctypes.get_errno()}")
                    continue
                for prog_id in ids[: struct.unpack_from("=I", attr.raw, 24)[0]]:
                    fd, _ = bpf(PROG_GET_FD_BY_ID, struct.pack("=I", prog_id))
                    info = ctypes.create_string_buffer(256)
                    bpf(OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, 256, ctypes.addressof(info)))
                    os.close(fd)
                    program = info.raw[64:80].split(bytes(1))[0].decode()  # bpf_prog_info.name
                    print(f"tcx {name} {direction}: {program}")
        """

    /// Weir's table as canonical JSON objects, one per line: handles dropped, counters zeroed, set elements
    /// sorted, rules numbered within their chain (their order matters; the order objects are listed in not).
    static func nftables(_ output: String) -> [String] {
        guard let data = output.data(using: .utf8), let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let objects = root["nftables"] as? [[String: Any]]
        else { return [] }
        var position: [String: Int] = [:]
        var lines: [String] = []
        for object in objects where object["metainfo"] == nil {
            var line = canonical(scrub(object)).replacingOccurrences(
                of: #""comment":"weir:[0-9a-f]+""#, with: #""comment":"weir:H""#, options: .regularExpression)
            if let rule = object["rule"] as? [String: Any], let chain = rule["chain"] as? String {
                position[chain, default: 0] += 1
                line = "rule \(chain) #\(position[chain]!) " + line
            }
            lines.append(line)
        }
        return lines
    }

    private static func scrub(_ value: Any) -> Any {
        switch value {
        case let object as [String: Any]:
            var result: [String: Any] = [:]
            for (key, item) in object where key != "handle" {
                result[key] = (key == "packets" || key == "bytes") && item is NSNumber ? 0 : scrub(item)
            }
            return result
        case let array as [Any]:
            let items = array.map(scrub)
            return items
        default:
            return value
        }
    }

    private static func canonical(_ value: Any) -> String {
        switch value {
        case let object as [String: Any]:
            // Set elements are a set: their listing order is the kernel's hash order.
            let body = object.keys.sorted().map { key -> String in
                var item = object[key]!
                if key == "elem", let elements = item as? [Any] { item = elements.map(canonical).sorted() }
                return "\"\(key)\":" + (item is [String] ? "[" + (item as! [String]).joined(separator: ",") + "]" : canonical(item))
            }
            return "{" + body.joined(separator: ",") + "}"
        case let array as [Any]:
            return "[" + array.map(canonical).joined(separator: ",") + "]"
        case let string as String:
            return "\"\(string)\""
        case let number as NSNumber:
            return number.stringValue
        default:
            return "\(value)"
        }
    }

    /// tc's lines without what history or the kernel numbers: ids, HTB minors, u32 and action indexes,
    /// counters, and the kernel's default root qdisc (handle 0:).
    static func tcLines(_ output: String) -> [String] {
        let rewrites: [(String, String)] = [
            (#"refcnt \d+"#, ""), (#"direct_packets_stat \d+"#, ""), (#" id \d+"#, " id N"), (#" tag [0-9a-f]+"#, " tag T"),
            (#"7765:[0-9a-f]+"#, "7765:M"), (#"leaf [0-9a-f]+:"#, "leaf L:"), (#"^qdisc (\w+) [0-9a-f]+: parent"#, "qdisc $1 L: parent"),
            (#"fh [0-9a-f:]+"#, "fh F"), (#"order \d+"#, "order N"), (#"index \d+ ref \d+ bind \d+"#, "index N"),
            (#" +"#, " "),
        ]
        var lines: [String] = []
        for raw in output.split(separator: "\n") {
            var line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.range(of: #"^qdisc \w+ 0: root"#, options: .regularExpression) != nil { continue }
            for (pattern, template) in rewrites { line = replacing(line, pattern, template) }
            lines.append(line.trimmingCharacters(in: .whitespaces))
        }
        return lines
    }

    private static func replacing(_ text: String, _ pattern: String, _ template: String) -> String {
        guard let expression = try? NSRegularExpression(pattern: pattern, options: [.anchorsMatchLines]) else { return text }
        return expression.stringByReplacingMatches(in: text, range: NSRange(text.startIndex..., in: text), withTemplate: template)
    }

    /// Paths below `root`, relative to it, directories with a trailing slash.
    private static func files(under root: String) -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: root) else { return [] }
        var result: [String] = []
        while let path = enumerator.nextObject() as? String {
            var isDirectory: ObjCBool = false
            FileManager.default.fileExists(atPath: root + "/" + path, isDirectory: &isDirectory)
            result.append(path + (isDirectory.boolValue ? "/" : ""))
        }
        return result.sorted()
    }
}
