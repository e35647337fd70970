import CWeirSystem
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// An epoll instance with an eventfd already watched in it under `wakeupTag`: what every thread that waits on raw
/// descriptors (the UDP relay, the stream relay) needs to be woken by other threads.
enum WakeablePoll {
    /// Both descriptors, or an error with neither left open.
    static func open(wakeupTag: UInt64) throws -> (poll: Int32, wakeup: Int32) {
        let poll = weir_poll_create()
        guard poll >= 0 else { throw IOError(errnoCode: -poll, reason: "epoll_create1") }
        let wakeup = weir_poll_wakeup_create()
        guard wakeup >= 0 else {
            Glibc.close(poll)
            throw IOError(errnoCode: -wakeup, reason: "eventfd")
        }
        let added = weir_poll_add(poll, wakeup, wakeupTag)
        guard added == 0 else {
            Glibc.close(poll)
            Glibc.close(wakeup)
            throw IOError(errnoCode: -added, reason: "epoll_ctl")
        }
        return (poll, wakeup)
    }
}
