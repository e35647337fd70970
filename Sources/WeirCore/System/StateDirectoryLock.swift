#if canImport(Glibc)
import Glibc
#endif

/// An exclusive lock on an agent's state directory, held for the life of the process. Two agents on one
/// state directory would both attach to its pinned eBPF maps (counting every packet twice) and fight over
/// its kernel objects, so the second refuses to start and names the first. The kernel drops the lock when
/// its holder exits, kill -9 included, so a crash never leaves a stale lock behind.
public final class StateDirectoryLock: Sendable {
    public struct Held: Error, CustomStringConvertible {
        public let description: String
    }

    private let descriptor: Int32

    /// Takes the lock on `directory/agent.lock` (creating the directory and the file), or throws saying who
    /// holds it.
    public init(directory: String) throws(Held) {
        let path = directory + "/agent.lock"
        if mkdir(directory, 0o755) != 0, errno != EEXIST {
            throw Held(description: "cannot create the state directory \(directory): \(String(cString: strerror(errno)))")
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Held(description: "cannot open \(path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = Self.recordedPID(fd)
            close(fd)
            throw Held(description: "another weir agent\(holder.map { " (pid \($0))" } ?? "") is running on the state directory \(directory); "
                + "each agent needs its own agent.state_dir")
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        descriptor = fd
    }

    deinit { close(descriptor) }

    private static func recordedPID(_ fd: Int32) -> Int? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let count = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count > 0 else { return nil }
        return Int(String(decoding: buffer.prefix(count).filter { (48...57).contains($0) }, as: UTF8.self))
    }
}
