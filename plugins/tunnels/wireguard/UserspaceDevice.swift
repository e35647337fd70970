import CWeirNetlink
import CWeirSystem
import Foundation
import Glibc

/// A WireGuard interface run by `wireguard-go` (Debian's package), configured over its UAPI socket
/// (`/var/run/wireguard/NAME.sock`). wireguard-go daemonises itself: the tunnel outlives the agent, as a
/// kernel interface would; deleting the interface ends it.
struct UserspaceDevice: Sendable {
    let interface: String

    static let socketDirectory = "/var/run/wireguard"
    var socketPath: String { "\(Self.socketDirectory)/\(interface).sock" }

    struct DeviceError: Error, CustomStringConvertible {
        let description: String
    }

    /// The wireguard-go binary: on PATH or in /usr/bin.
    static var binary: String? {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init)
        return (path + ["/usr/bin", "/usr/local/bin"]).map { $0 + "/wireguard-go" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Starts wireguard-go for the interface and waits until its socket answers.
    func create() throws {
        guard let binary = Self.binary else {
            throw DeviceError(description: "the userspace backend needs wireguard-go (Debian package wireguard-go), which is not installed")
        }
        // A socket left by a wireguard-go that died would make the new one refuse to start.
        if if_nametoindex(interface) == 0 { unlink(socketPath) }
        var environment = ProcessInfo.processInfo.environment
        // wireguard-go refuses to run on Linux without it (it prefers the kernel module, which is missing here).
        environment["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
        environment["LOG_LEVEL"] = "error"
        let status = Self.run(binary, [binary, interface], environment: environment)
        guard status == 0 else { throw DeviceError(description: "wireguard-go \(interface) exited with status \(status)") }
        let deadline = ContinuousClock.now + .seconds(5)
        while ContinuousClock.now < deadline {
            if (try? get()) != nil { return }
            usleep(20_000)
        }
        throw DeviceError(description: "wireguard-go started but \(socketPath) does not answer")
    }

    /// Deletes the interface; wireguard-go exits with it.
    func destroy() {
        _ = weir_link_delete(interface)
        unlink(socketPath)
    }

    func get() throws -> DeviceState {
        let answer = try exchange("get=1\n\n")
        return try UAPI.parseGet(answer)
    }

    /// Applies one `set=1` transaction.
    func set(_ transaction: String) throws {
        let answer = try exchange(transaction)
        guard answer.contains("errno=0") else {
            throw DeviceError(description: "\(interface) refused the change: \(answer.trimmingCharacters(in: .whitespacesAndNewlines))")
        }
    }

    /// Writes a request and reads the answer up to its blank line.
    private func exchange(_ request: String) throws -> String {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DeviceError(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else { throw DeviceError(description: "socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path + [0]) }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            throw DeviceError(description: "cannot reach \(socketPath): \(String(cString: strerror(errno)))")
        }
        let bytes = Array(request.utf8)
        var sent = 0
        while sent < bytes.count {
            let count = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { throw DeviceError(description: "writing to \(socketPath): \(String(cString: strerror(errno)))") }
            sent += count
        }
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !(answer.count >= 2 && answer[answer.count - 2] == 10 && answer[answer.count - 1] == 10) {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            answer += buffer[0..<count]
        }
        return String(decoding: answer, as: UTF8.self)
    }

    private static func run(_ path: String, _ arguments: [String], environment: [String: String]) -> Int32 {
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for item in argv { free(item) }
            for item in envp { free(item) }
        }
        return weir_spawn_wait(path, argv, envp)
    }
}
