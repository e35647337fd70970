import CWeirSystem
import Foundation

/// The thread cannot have a descriptor table of its own (the system refused `unshare`), so a library that
/// waits with `select()` is not run at all rather than risk aborting the process.
public struct DescriptorIsolationFailed: Error, CustomStringConvertible {
    public let errno: Int32
    public var description: String {
        "cannot give the netlink thread a descriptor table of its own: \(String(cString: strerror(errno)))"
    }
}

/// A thread with a descriptor table of its own, for C libraries that wait on their sockets with `select()`.
///
/// `select()`'s fd_set holds descriptors 0-1023 only; glibc aborts the process when a larger one is set
/// ("bit out of range 0 - FD_SETSIZE on fd_set"). libnftables waits on its netlink socket that way, and an
/// agent with a few hundred open connections has descriptors far above 1023, so the socket libnftables opens
/// on an ordinary thread lands wherever the lowest free number happens to be. This thread starts with a table
/// of its own holding only 0, 1 and 2 (`weir_isolate_descriptor_table`): whatever a job opens here is numbered
/// from 3, however many descriptors the rest of the process holds, and is invisible to other threads. Jobs
/// must therefore open, use and close their descriptors here (a libnftables context lives for one job).
/// Jobs run one at a time in the order they were submitted; callers block until theirs is done.
public final class DescriptorIsolatedThread: @unchecked Sendable {
    /// The one thread every libnftables call runs on.
    public static let netlink = DescriptorIsolatedThread(name: "weir-netlink")

    private let condition = NSCondition()
    private var jobs: [Job] = []
    /// nil until the thread has tried to isolate its table; then 0 or the errno that refused it.
    private var isolation: Int32?
    private var thread: Thread?

    /// One call's work. The closure is dropped on the isolated thread before the caller is woken: it refers
    /// to the caller's non-escaping body, which must not outlive the call.
    private final class Job {
        var work: (() -> Void)?
        var finished = false
        let done = NSCondition()

        init(_ work: @escaping () -> Void) { self.work = work }
    }

    private init(name: String) {
        let thread = Thread { [unowned self] in self.main() }
        thread.name = name
        thread.stackSize = 1 << 20
        self.thread = thread
        thread.start()
    }

    private func main() {
        let status = weir_isolate_descriptor_table()
        condition.lock()
        isolation = status == 0 ? 0 : -status
        condition.broadcast()
        condition.unlock()
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job.work?()
            job.work = nil
            job.done.lock()
            job.finished = true
            job.done.signal()
            job.done.unlock()
        }
    }

    /// Runs `body` on the isolated thread and returns what it returned; blocks the caller meanwhile.
    public func run<T>(_ body: () throws -> T) throws -> T {
        if Thread.current === thread { return try body() }
        return try withoutActuallyEscaping(body) { body in
            var result: Result<T, any Error>?
            let job = Job { result = Result { try body() } }
            condition.lock()
            while isolation == nil { condition.wait() }
            if let failure = isolation, failure != 0 {
                condition.unlock()
                throw DescriptorIsolationFailed(errno: failure)
            }
            jobs.append(job)
            condition.broadcast()
            condition.unlock()
            job.done.lock()
            while !job.finished { job.done.wait() }
            job.done.unlock()
            return try result!.get()
        }
    }

    /// How many descriptors the thread's own table holds (for tests: a job that leaks shows here).
    public func descriptorCount() throws -> Int {
        try run { Int(weir_thread_descriptor_count()) }
    }
}
