import CWeirNetlink
import Glibc
import WeirVPN

/// What the stage needs of a WireGuard interface, whichever backend runs it: the kernel module
/// (`KernelDevice`, generic netlink) or wireguard-go (`UserspaceDevice`, UAPI socket). Both read the same
/// `DeviceState` and apply the same `PeerPlan`.
protocol WireGuardDevice: Sendable {
    var interface: String { get }
    /// `kernel` or `userspace`, for logs and state.
    var backend: String { get }
    func create() throws
    /// Deletes the interface.
    func destroy()
    func get() throws -> DeviceState
    /// Applies the plan in transactions of at most `chunk` peers.
    func apply(_ plan: PeerPlan, purging: Bool, chunk: Int) throws
    /// Takes peers off the device (their sessions end; adding them again starts fresh ones).
    func remove(peers: [WireGuardKey]) throws
}

extension WireGuardDevice {
    func apply(_ plan: PeerPlan, purging: Bool) throws { try apply(plan, purging: purging, chunk: 500) }
}

extension UserspaceDevice: WireGuardDevice {
    var backend: String { "userspace" }

    func apply(_ plan: PeerPlan, purging: Bool, chunk: Int) throws {
        for transaction in plan.uapiTransactions(purging: purging, chunk: chunk) { try set(transaction) }
    }

    func remove(peers: [WireGuardKey]) throws {
        guard !peers.isEmpty else { return }
        try set("set=1\n" + peers.map { "public_key=\($0.hex)\nremove=true\n" }.joined() + "\n")
    }
}

/// Which backend runs an interface: the one that created it (remembered in the stage's state), else the
/// kernel module where the kernel has it (`auto`), else wireguard-go.
enum DeviceChoice {
    static func device(interface: String, backend: WireGuardConfig.Backend, createdBy: String?) throws -> any WireGuardDevice {
        if let createdBy, if_nametoindex(interface) != 0 {
            return createdBy == "kernel" ? KernelDevice(interface: interface) : UserspaceDevice(interface: interface)
        }
        switch backend {
        case .userspace: return UserspaceDevice(interface: interface)
        case .kernel:
            guard KernelDevice.isAvailable else {
                throw UserspaceDevice.DeviceError(description: "backend: kernel, but this kernel has no wireguard module; use auto or userspace")
            }
            return KernelDevice(interface: interface)
        case .auto: return KernelDevice.isAvailable ? KernelDevice(interface: interface) : UserspaceDevice(interface: interface)
        }
    }
}
