import Glibc

/// The process's limit on open descriptors (`RLIMIT_NOFILE`).
///
/// Every forwarded connection holds two descriptors, so the usual soft limit of 1024 caps an agent at a few
/// hundred connections. The agent raises its soft limit to the hard limit at start (what the administrator,
/// or systemd's `LimitNOFILE`, allows); raising the hard limit itself is the administrator's decision.
public enum DescriptorLimit {
    /// Raises the soft limit to the hard limit; returns both as they are afterwards.
    @discardableResult
    public static func raiseSoftToHard() -> (soft: UInt64, hard: UInt64) {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return (0, 0) }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return (UInt64(limit.rlim_cur), UInt64(limit.rlim_max))
    }

    /// The soft limit now (clamped to Int).
    public static func currentSoft() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        return Int(clamping: limit.rlim_cur)
    }
}
