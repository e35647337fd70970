import Testing
import WeirCore

@Suite struct IPNetworkTests {
    @Test func parsesAddressesAndNetworks() throws {
        #expect(try IPNetwork.parse("192.0.2.7").description == "192.0.2.7")
        #expect(try IPNetwork.parse("198.51.100.0/24").prefix == 24)
        #expect(try IPNetwork.parse("2001:DB8::/32").description == "2001:db8::/32")
        #expect(throws: ValueError.self) { try IPNetwork.parse("10.0.0.1/8") }
        #expect(throws: ValueError.self) { try IPNetwork.parse("10.0.0.0/33") }
        #expect(throws: ValueError.self) { try IPNetwork.parse("example.com") }
    }

    @Test func publicAndPrivate() throws {
        #expect(try IPNetwork.parse("8.8.8.8").isPublic)
        #expect(try IPNetwork.parse("2a01:4f8::1").isPublic)
        for text in ["10.1.2.3", "172.16.0.0/12", "192.168.1.1", "127.0.0.1", "169.254.1.1", "100.64.0.1", "0.0.0.0/0",
                     "fd00::1", "fe80::1", "::1", "2001:db8::1", "ff02::1"] {
            #expect(try !IPNetwork.parse(text).isPublic, "\(text)")
        }
    }

    @Test func subtractCoversExactlyTheRest() throws {
        let whole = try IPNetwork.parse("0.0.0.0/0")
        let rest = IPNetwork.subtract(IPNetwork.nonPublic, from: whole)
        #expect(rest.allSatisfy { $0.isPublic })
        #expect(rest.contains(try IPNetwork.parse("11.0.0.0/8")))
        #expect(!rest.contains { $0.overlaps(try! IPNetwork.parse("10.0.0.0/8")) })
        // Together they cover every address: sizes add up to 2^32.
        let size = { (networks: [IPNetwork]) in networks.filter { $0.isIPv4 }.reduce(0.0) { $0 + pow2(32 - $1.prefix) } }
        let total = size(rest) + size(IPNetwork.nonPublic.filter { $0.isIPv4 })
        #expect(total == pow2(32))
        let rest6 = IPNetwork.subtract(IPNetwork.nonPublic, from: try IPNetwork.parse("::/0"))
        #expect(rest6.allSatisfy { $0.isPublic })
    }
}

private func pow2(_ exponent: Int) -> Double { Double(UInt64(1) << UInt64(exponent)) }
