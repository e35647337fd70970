import Foundation
import Testing

/// `select()` cannot take a descriptor above 1023 (glibc aborts the process), and a busy agent has thousands.
/// These are the libraries the agent links that call it, and why each is safe; a new one fails this test
/// until its calls are confined the same way (see DescriptorIsolatedThread) or shown unreachable.
@Suite("Libraries that call select()", .enabled(if: which("nm") != nil && which("ldd") != nil, "needs binutils (nm) and ldd"))
struct SelectUsersTests {
    static let known: [String: String] = [
        // Every call into libnftables runs on DescriptorIsolatedThread.netlink.
        "libnftables.so.1": "runs only on the thread with a descriptor table of its own",
        // BIO_socket_wait (OpenSSL's HTTP/CMP/OCSP clients) and /dev/random seeding on kernels before 4.8 (and
        // only for descriptors below FD_SETSIZE): Weir calls libcrypto's EVP AEAD functions only.
        "libcrypto.so.3": "select only in BIO_socket_wait and legacy /dev/random seeding, which Weir never calls",
        // CFSocket, which Weir does not use (NIO has its own epoll loop).
        "libFoundation.so": "select only in CFSocket",
    ]

    @Test("the weir binary and its libraries call select() only where it is known to be safe")
    func selectUsersAreKnown() throws {
        let binary = WeirProcess.binary
        let (status, linked) = try command([which("ldd")!, binary])
        #expect(status == 0, "\(linked)")
        let libraries = linked.split(separator: "\n").compactMap { line -> String? in
            let parts = line.split(separator: " ")
            guard let arrow = parts.firstIndex(of: "=>"), arrow + 1 < parts.count, parts[arrow + 1].hasPrefix("/") else { return nil }
            return String(parts[arrow + 1])
        }
        #expect(libraries.contains { $0.contains("libnftables") }, "\(linked)")
        var users: [String] = []
        for file in [binary] + libraries {
            let (_, symbols) = try command([which("nm")!, "-D", "--undefined-only", file])
            let calls = symbols.split(separator: "\n").contains { line in
                let name = line.split(separator: " ").last.map { String($0.split(separator: "@").first ?? "") } ?? ""
                return ["select", "pselect", "__fdelt_chk"].contains(name)
            }
            if calls { users.append((file as NSString).lastPathComponent) }
        }
        let unknown = users.filter { Self.known[$0] == nil }
        #expect(unknown.isEmpty, "links libraries that call select(), which aborts above descriptor 1023: \(unknown)")
        #expect(users.contains("libnftables.so.1"), "the check sees libnftables' select: \(users)")
    }
}
