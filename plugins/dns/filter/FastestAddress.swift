import NIOCore
import NIOPosix

/// `fastest_address`: of an answer's addresses, the one that accepts a TCP connection first (the tunnel
/// client's "multi-IP concurrent testing"). Probes run at once, at most `maxProbes` of them, each bounded by
/// `timeout`; the first to connect wins and the others are abandoned (their connections closed as they come).
struct FastestAddress: Sendable {
    let port: Int
    let timeout: Duration
    let group: any EventLoopGroup
    static let maxProbes = 8

    /// The index into `addresses` of the first to accept a connection, or nil when none did in time.
    func probe(_ addresses: [[UInt8]]) async -> Int? {
        await withTaskGroup(of: Int?.self) { tasks in
            for (index, bytes) in addresses.prefix(Self.maxProbes).enumerated() {
                tasks.addTask { await connects(bytes) ? index : nil }
            }
            for await result in tasks {
                if let result {
                    tasks.cancelAll()
                    return result
                }
            }
            return nil
        }
    }

    private func connects(_ bytes: [UInt8]) async -> Bool {
        guard let address = try? SocketAddress(packedIPAddress: ByteBuffer(bytes: bytes), port: port) else { return false }
        let milliseconds = timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
        let connecting = ClientBootstrap(group: group)
            .connectTimeout(.milliseconds(max(1, milliseconds)))
            .connect(to: address)
        do {
            let channel = try await withTaskCancellationHandler {
                try await connecting.get()
            } onCancel: {
                // A loser that still connects is closed at once.
                connecting.whenSuccess { $0.close(promise: nil) }
            }
            try? await channel.close()
            return true
        } catch {
            return false
        }
    }
}
