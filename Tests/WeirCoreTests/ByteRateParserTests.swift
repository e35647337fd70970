import Testing
import WeirCore

@Suite struct ByteRateParserTests {
    @Test(arguments: [
        ("10MiB/s", 10_485_760.0),
        ("80mbit", 10_000_000.0),
        ("1gbit", 125_000_000.0),
        ("512kbit", 64_000.0),
        ("500KB/s", 500_000.0),
        ("1GB/s", 1_000_000_000.0),
        ("64KiB/s", 65_536.0),
        ("2GiB/s", 2_147_483_648.0),
        ("1.5MiB/s", 1_572_864.0),
        ("100B/s", 100.0),
        ("8bit", 1.0),
        ("10MB", 10_000_000.0),
        ("80Mbit", 10_000_000.0),
        (" 10 MiB/s ", 10_485_760.0),
    ])
    func parsesRatesInBytesPerSecond(text: String, bytesPerSecond: Double) throws {
        #expect(try ByteRateParser.parse(text) == bytesPerSecond)
    }

    @Test(arguments: ["100Mbps", "100mbps", "10MBps", "1kbps", "8bps"])
    func refusesBpsAsAmbiguous(text: String) throws {
        let error = try #require(throws: ValueError.self) { try ByteRateParser.parse(text) }
        #expect(error.description.contains("is ambiguous"))
    }

    @Test func ambiguousMessageSuggestsBothSpellings() throws {
        let error = try #require(throws: ValueError.self) { try ByteRateParser.parse("100Mbps") }
        #expect(error.description == "\"100Mbps\" is ambiguous: write bits as 100Mbit or bytes as 100MB/s")
    }

    @Test(arguments: ["fast", "", "MiB/s", "0MiB/s", "-1MiB/s", "10", "10furlongs", "10XiB/s", "10mib/s", "10 per second"])
    func refusesGarbage(text: String) {
        #expect(throws: ValueError.self) { try ByteRateParser.parse(text) }
    }

    @Test func unknownUnitListsTheKnownOnes() throws {
        let error = try #require(throws: ValueError.self) { try ByteRateParser.parse("10furlongs") }
        #expect(error.description.hasPrefix("\"10furlongs\" has an unknown unit"))
        #expect(error.description.contains("mbit"))
        #expect(error.description.contains("MiB/s"))
        let zero = try #require(throws: ValueError.self) { try ByteRateParser.parse("0MiB/s") }
        #expect(zero.description == "\"0MiB/s\" is not a positive rate (examples: 10MiB/s, 80mbit, 1gbit)")
    }

    @Test(arguments: [("65536", 65536), ("64KiB", 65536), ("16MiB", 16 << 20), ("16 MiB", 16 << 20), ("500KB", 500_000), ("1GB", 1_000_000_000), ("10B", 10), ("2GiB", 2 << 30)])
    func parsesSizesInBytes(text: String, bytes: Int) throws {
        #expect(try ByteSizeParser.parse(text) == bytes)
    }

    @Test(arguments: ["0", "-1", "1.5MiB", "16Mi", "16MiB/s", "10mbit", "lots", "", "2TiB", "99999999999999999999"])
    func refusesWhatIsNotASize(text: String) {
        #expect(throws: ValueError.self) { try ByteSizeParser.parse(text) }
    }
}
