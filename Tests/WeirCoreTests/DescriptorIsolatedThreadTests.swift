import Foundation
import Testing
import WeirCore

#if canImport(Glibc)
import Glibc
#endif

/// The thread libnftables runs on: whatever it opens is numbered from 3, however many descriptors the
/// process holds, so `select()` there never sees a descriptor above 1023.
@Suite struct DescriptorIsolatedThreadTests {
    @Test("With 1,100 descriptors open in the process, a socket opened on the isolated thread is numbered below 16")
    func socketsOnTheThreadAreSmall() throws {
        DescriptorLimit.raiseSoftToHard()
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        while held.count < 1_100 { held.append(open("/dev/null", O_RDONLY)) }
        #expect(held.allSatisfy { $0 >= 0 })
        let outside = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue), 0)
        defer { close(outside) }
        #expect(outside > 1_023, "on an ordinary thread the next descriptor is above 1023: \(outside)")

        let inside = try DescriptorIsolatedThread.netlink.run { () -> Int32 in
            let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue), 0)
            close(fd)
            return fd
        }
        #expect(inside >= 3 && inside < 16, "\(inside)")
        // The thread's table holds 0, 1 and 2 (and the listing's own descriptor is not counted): nothing leaks.
        #expect(try DescriptorIsolatedThread.netlink.descriptorCount() <= 3)
    }

    @Test("Jobs return values and errors in order, from many callers at once")
    func jobsFromManyCallers() async throws {
        struct Refused: Error {}
        let results = await withTaskGroup(of: Int?.self) { group in
            for index in 0..<200 {
                group.addTask {
                    try? DescriptorIsolatedThread.netlink.run { () throws -> Int in
                        if index % 10 == 0 { throw Refused() }
                        return index * 2
                    }
                }
            }
            var collected: [Int?] = []
            for await result in group { collected.append(result) }
            return collected
        }
        #expect(results.count == 200)
        #expect(results.compactMap { $0 }.sorted() == (0..<200).filter { $0 % 10 != 0 }.map { $0 * 2 })
    }
}
