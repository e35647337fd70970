import CWeirBPF
import Glibc
import WeirCore

/// One program attached at one interface and direction. Detaching removes exactly what was attached:
/// closing our tcx link, or deleting our clsact filter by its handle and priority — never other programs'
/// filters and never the qdisc, which others may use.
enum TCAttachment {
    case tcx(linkFD: Int32, interface: String)
    case clsact(ifindex: Int32, ingress: Bool, handle: UInt32, priority: UInt32, interface: String)

    /// Priority of Weir's clsact filters; each pipeline's filter has its own handle at it. Filters run in
    /// priority order and the first one that classifies a packet ends the walk, so a counter goes first:
    /// it returns "unspecified" and the walk continues. (0xC000, tc's default, would also collide with
    /// filters added without a priority.)
    static let clsactPriority: UInt32 = 1

    /// Attaches `programFD` as a tcx link, or as a clsact filter at `handle` when `mode` says so or when the
    /// kernel has no tcx (`auto`). Returns the mode used, so later attachments skip the failed tcx attempt.
    static func attach(
        programFD: Int32, interface: NetworkInterface, ingress: Bool, mode: CountEBPFConfig.AttachMode, handle: UInt32
    ) throws(BPFError) -> (TCAttachment, CountEBPFConfig.AttachMode) {
        if mode != .clsact {
            let fd = weir_tcx_attach(programFD, interface.index, ingress ? 1 : 0)
            if fd >= 0 { return (.tcx(linkFD: fd, interface: interface.name), .tcx) }
            // EINVAL: the kernel does not know the attach type (before 6.6).
            guard mode == .auto, -fd == EINVAL || -fd == EOPNOTSUPP else { throw BPFError.last(-fd) }
        }
        _ = try BPFError.check(weir_clsact_attach(programFD, interface.index, ingress ? 1 : 0, handle, clsactPriority))
        return (.clsact(ifindex: interface.index, ingress: ingress, handle: handle, priority: clsactPriority, interface: interface.name), .clsact)
    }

    func detach() throws(BPFError) {
        switch self {
        case .tcx(let fd, _):
            Glibc.close(fd)
        case .clsact(let ifindex, let ingress, let handle, let priority, _):
            _ = try BPFError.check(weir_clsact_detach(ifindex, ingress ? 1 : 0, handle, priority))
        }
    }

    /// The clsact handle of a pipeline's filters: stable across restarts, so a restarted agent replaces the
    /// filters its predecessor left rather than adding a second set.
    static func clsactHandle(pipeline: String) -> UInt32 {
        var hash: UInt32 = 2_166_136_261  // FNV-1a
        for byte in "weir/\(pipeline)".utf8 {
            hash = (hash ^ UInt32(byte)) &* 16_777_619
        }
        return hash == 0 ? 1 : hash
    }
}
