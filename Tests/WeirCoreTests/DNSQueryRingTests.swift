import Glibc
import NIOCore
import Testing
@testable import WeirCore

/// The DNS query ring without a DNS server: bounded, newest first, filtered, carried across a reload.
@Suite struct DNSQueryRingTests {
    static func event(_ index: Int, result: String = "allowed", client: String = "10.0.0.1") -> DNSQueryEvent {
        DNSQueryEvent(
            time: Double(index), client: DNSClient(try! SocketAddress(ipAddress: client, port: 5353))!, name: "n\(index).example", type: 1, result: result,
            rule: nil, upstream: nil, latency: .milliseconds(1))
    }

    @Test("holds the newest `capacity` events whatever was written; newest first; filters by result and by part of the name or client")
    func boundedAndFiltered() {
        let ring = DNSQueryRing(capacity: 5)
        #expect(ring.events(DNSQueryFilter()).isEmpty)
        for index in 0..<3 { ring.append(Self.event(index)) }
        #expect(ring.events(DNSQueryFilter()).map(\.name) == ["n2.example", "n1.example", "n0.example"])
        for index in 3..<13 { ring.append(Self.event(index, result: index % 2 == 0 ? "blocked" : "allowed", client: index == 12 ? "::ffff:192.0.2.7" : "10.0.0.1")) }
        #expect(ring.events(DNSQueryFilter(limit: 100)).map(\.time) == [12, 11, 10, 9, 8])
        #expect(ring.events(DNSQueryFilter(result: "blocked")).map(\.time) == [12, 10, 8])
        #expect(ring.events(DNSQueryFilter(limit: 2)).map(\.time) == [12, 11])
        #expect(ring.events(DNSQueryFilter(search: "N9.EX")).map(\.time) == [9])
        // An IPv4 client of a socket on [::] is shown (and found) as IPv4.
        #expect(ring.events(DNSQueryFilter(search: "192.0.2.7")).map(\.clientText) == ["192.0.2.7"])
        #expect(Self.event(1).typeText == "A" && DNSWire.typeName(65) == "HTTPS" && DNSWire.typeName(65280) == "TYPE65280")
        #expect(Self.event(0).timeText == "1970-01-01T00:00:00.000Z" && Self.event(0).milliseconds == 1)
        // A batch larger than what is left, wrapping around the ring, keeps its newest events in order.
        ring.append(contentsOf: (13..<20).map { Self.event($0) })
        #expect(ring.events(DNSQueryFilter(limit: 100)).map(\.time) == [19, 18, 17, 16, 15])
    }

    @Test("a successor's ring starts with the newest events of the ring it replaces; only the current ring's owner removes it")
    func carriedAcrossReload() {
        let logs = DNSQueryLogs()
        let first = DNSQueryRing(capacity: 10)
        logs.install(first, for: "dns")
        for index in 0..<10 { first.append(Self.event(index)) }
        let second = DNSQueryRing(capacity: 4)
        logs.install(second, for: "dns")
        second.append(Self.event(10))
        #expect(logs.ring(of: "dns") === second)
        #expect(second.events(DNSQueryFilter()).map(\.time) == [10, 9, 8, 7])
        logs.remove(first, for: "dns")
        #expect(logs.pipelines == ["dns"], "the predecessor's retirement leaves the successor's ring")
        logs.remove(second, for: "dns")
        #expect(logs.pipelines.isEmpty)
    }

    @Test("a client address is kept as bytes: IPv4, IPv6, and an IPv4 client of a dual-stack socket as IPv4")
    func clientAddresses() throws {
        let v4 = try #require(DNSClient(try SocketAddress(ipAddress: "192.0.2.7", port: 53)))
        #expect(v4.isIPv4 && v4.bytes == [192, 0, 2, 7] && v4.text == "192.0.2.7")
        let v6 = try #require(DNSClient(try SocketAddress(ipAddress: "2001:db8::1:2", port: 53)))
        #expect(!v6.isIPv4 && v6.bytes.count == 16 && v6.text == "2001:db8::1:2" && v6.network.prefix == 128)
        let mapped = try #require(DNSClient(try SocketAddress(ipAddress: "::ffff:198.51.100.9", port: 53)))
        #expect(mapped.isIPv4 && mapped.text == "198.51.100.9")
        var storage = sockaddr_storage()
        try SocketAddress(ipAddress: "::ffff:198.51.100.9", port: 53).withSockAddr { address, length in
            withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: length)) }
        }
        #expect(DNSClient(storage) == mapped, "from a received datagram's peer too")
        #expect(DNSClient(try SocketAddress(unixDomainSocketPath: "/tmp/x")) == nil)
    }
}
