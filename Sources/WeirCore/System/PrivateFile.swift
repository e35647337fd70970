#if canImport(Glibc)
import Glibc
#endif

/// Files only the agent's (or coordinator's) user may read: bundles that may carry passwords, credentials,
/// keys. Created `0600` from the first byte (not chmod-ed after a write, which leaves a window) and replaced
/// by rename, so a reader sees the old file or the new one, never half of one.
public enum PrivateFile {
    public struct WriteError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Writes `bytes` to `path.tmp`, flushes it, and renames it over `path`.
    public static func write(_ bytes: some Collection<UInt8>, to path: String) throws(WriteError) {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw failure("cannot create \(temporary)") }
        // An existing temporary file (left by a crash) keeps its mode through O_CREAT: set it.
        var ok = fchmod(fd, 0o600) == 0
        let data = Array(bytes)
        var written = 0
        while ok, written < data.count {
            let count = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
            if count < 0, errno == EINTR { continue }
            ok = count > 0
            written += max(count, 0)
        }
        ok = ok && fsync(fd) == 0
        let reason = errno
        close(fd)
        guard ok else {
            unlink(temporary)
            errno = reason
            throw failure("cannot write \(temporary)")
        }
        guard rename(temporary, path) == 0 else {
            let error = failure("cannot rename \(temporary) to \(path)")
            unlink(temporary)
            throw error
        }
    }

    /// Sets `path` to 0600 when it exists (a file written by an older version, or by another tool).
    public static func restrict(_ path: String) {
        _ = chmod(path, 0o600)
    }

    private static func failure(_ what: String) -> WriteError {
        WriteError(description: "\(what): \(String(cString: strerror(errno)))")
    }
}
