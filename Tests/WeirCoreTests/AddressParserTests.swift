import Testing
import WeirCore

@Suite struct HostPortTests {
    @Test(arguments: [
        ("10.0.0.5:443", "10.0.0.5", 443, true),
        ("127.0.0.1:1", "127.0.0.1", 1, true),
        ("[2001:db8::1]:443", "2001:db8::1", 443, true),
        ("[::1]:65535", "::1", 65535, true),
        ("backend.internal:443", "backend.internal", 443, false),
        ("localhost:80", "localhost", 80, false),
        ("my-host_1.example.com:8080", "my-host_1.example.com", 8080, false),
    ])
    func parsesHostAndPort(text: String, host: String, port: Int, literal: Bool) throws {
        let parsed = try HostPort.parse(text)
        #expect(parsed.host == host)
        #expect(parsed.port == port)
        #expect(parsed.isIPLiteral == literal)
        #expect(parsed.description == text)
    }

    @Test(arguments: [
        ("10.0.0.1:0", #""0" is not a port number (1-65535)"#),
        ("10.0.0.1:65536", #""65536" is not a port number (1-65535)"#),
        ("10.0.0.1:70000", #""70000" is not a port number (1-65535)"#),
        ("10.0.0.1:http", #""http" is not a port number (1-65535)"#),
        ("10.0.0.1:", #""" is not a port number (1-65535)"#),
        ("10.0.0.1:-1", #""-1" is not a port number (1-65535)"#),
        ("10.0.0.1", #""10.0.0.1" has no port (write host:port)"#),
        ("999.1.1.1:80", #""999.1.1.1" is not a valid host name or address"#),
        ("10.0.0:80", #""10.0.0" is not a valid host name or address"#),
        (":80", #""" is not a valid host name or address"#),
        ("-bad.example:80", #""-bad.example" is not a valid host name or address"#),
        ("a..b:80", #""a..b" is not a valid host name or address"#),
        ("wéird.example:80", #""wéird.example" is not a valid host name or address"#),
        ("2001:db8::1:443", #""2001:db8::1:443": put IPv6 addresses in brackets, as [2001:db8::1]:443"#),
        ("::1:80", #""::1:80": put IPv6 addresses in brackets, as [::1]:80"#),
        ("[::1]443", #""[::1]443" is not [IPv6]:port"#),
        ("[::1]", #""[::1]" is not [IPv6]:port"#),
        ("[example.com]:80", #""example.com" is not an IPv6 address"#),
        ("[::1]:0", #""0" is not a port number (1-65535)"#),
    ])
    func refusesBadAddresses(text: String, message: String) throws {
        let error = try #require(throws: ValueError.self) { try HostPort.parse(text) }
        #expect(error.description == message)
    }

    @Test func longHostNamesAreRefused() {
        let label63 = String(repeating: "a", count: 63)
        #expect(throws: Never.self) { try HostPort.parse("\(label63).example:80") }
        #expect(throws: ValueError.self) { try HostPort.parse("\(label63)a.example:80") }
        let name254 = Array(repeating: String(repeating: "b", count: 50), count: 5).joined(separator: ".") + ".cc"
        #expect(name254.count == 257)
        #expect(throws: ValueError.self) { try HostPort.parse("\(name254):80") }
    }
}

@Suite struct BindAddressTests {
    @Test(arguments: [
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("127.0.0.1:0", "127.0.0.1", 0),
        ("[::]:8080", "::", 8080),
        ("[::]:0", "::", 0),
        ("[::1]:9477", "::1", 9477),
    ])
    func parsesIPLiterals(text: String, host: String, port: Int) throws {
        let address = try BindAddress.parse(text)
        #expect(address.host == host)
        #expect(address.port == port)
        #expect(address.description == text)
        let socket = try address.socketAddress()
        #expect(socket.port == port)
        #expect(socket.ipAddress == host)
    }

    @Test(arguments: [
        ("localhost:8080", #""localhost:8080": a listen address must be an IP address, such as 0.0.0.0:8080 or [::]:8080"#),
        ("example.com:0", #""example.com:0": a listen address must be an IP address, such as 0.0.0.0:0 or [::]:0"#),
        ("0.0.0.0", #""0.0.0.0" has no port (write host:port)"#),
        ("0.0.0.0:65536", #""65536" is not a port number (0-65535)"#),
        ("300.0.0.1:0", #""300.0.0.1" is not a valid host name or address"#),
        // The message quotes what was written, not the ":1" the parser substitutes for port 0.
        ("::1:0", #""::1:0": put IPv6 addresses in brackets, as [::1]:0"#),
    ])
    func refusesNamesAndBadAddresses(text: String, message: String) throws {
        let error = try #require(throws: ValueError.self) { try BindAddress.parse(text) }
        #expect(error.description == message)
    }
}
