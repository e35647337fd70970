import NIOCore
import Testing
import WeirCore
import WeirStages

@testable import WeirListeners

/// The proxy listeners' options and their small parsers, without sockets.
@Suite struct ProxyListenerConfigTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    func errors(_ yaml: String) -> [String] {
        do {
            _ = try loader.loadPipelines(yaml: yaml, name: "p.yaml")
            Issue.record("expected errors")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    @Test func socks5OptionsAreRead() throws {
        let pipelines = try loader.loadPipelines(
            yaml: """
                pipelines:
                  s:
                    stages:
                      - type: listen.socks5
                        address: 127.0.0.1:1080
                        users: {alice: secret, bob: "two words"}
                        destinations: {allow: [10.0.0.0/8, .Example.COM], deny: [10.1.0.0/16]}
                      - type: connect.tcp
                """, name: "p.yaml")
        let config = try #require(pipelines.first?.stages.first?.config as? ListenSOCKS5Config)
        #expect(config.proxy.users?.users == ["alice": "secret", "bob": "two words"])
        #expect(config.proxy.destinations.allow.map(\.description) == ["10.0.0.0/8", "example.com"])
        #expect(config.proxy.destinations.permits(Destination(host: "10.2.3.4", port: 80)))
        #expect(!config.proxy.destinations.permits(Destination(host: "10.1.3.4", port: 80)))
        #expect(config.proxy.destinations.permits(Destination(host: "www.example.com.", port: 443)))
        #expect(config.proxy.destinations.permits(Destination(host: "EXAMPLE.com", port: 443)))
        #expect(!config.proxy.destinations.permits(Destination(host: "badexample.com", port: 443)))
        #expect(!config.proxy.destinations.permits(Destination(host: "8.8.8.8", port: 53)))
    }

    @Test func aConnectorWithoutTargetsNeedsAListenerThatNamesDestinations() {
        let found = errors(
            """
            pipelines:
              t:
                stages:
                  - type: listen.tcp
                    address: 127.0.0.1:8080
                  - type: connect.tcp
            """)
        #expect(found.count == 1 && found[0].hasPrefix("p.yaml:6:9: pipelines.t.stages[1] (connect.tcp): needs a destination for each connection, and no stage of this pipeline names one"), "\(found)")
    }

    @Test func badPolicyEntriesAndUsersAreReported() {
        let found = errors(
            """
            pipelines:
              h:
                stages:
                  - type: listen.http
                    address: 127.0.0.1:3128
                    users: {"a:b": x}
                    destinations: {allow: ["10.0.0.1/33", "bad..name"], block: []}
                  - type: connect.tcp
            """)
        #expect(found.contains { $0.contains("users.a:b: user names are 1-255 bytes without ':'") }, "\(found)")
        #expect(found.contains { $0.contains("destinations.allow[0]: not a network") }, "\(found)")
        #expect(found.contains { $0.contains("destinations.allow[1]: not a network") }, "\(found)")
        #expect(found.contains { $0.contains("destinations.block: unknown key \"block\"") }, "\(found)")
    }

    @Test func usernamePasswordRequestsParseIncrementally() {
        var buffer = ByteBuffer(bytes: [1, 5])
        #expect(UsernamePasswordRequest.parse(&buffer) == .incomplete)
        buffer.writeBytes(Array("alice".utf8) + [6])
        #expect(UsernamePasswordRequest.parse(&buffer) == .incomplete)
        #expect(buffer.readableBytes == 8, "nothing consumed before the request is complete")
        // The request the client sent along stays.
        buffer.writeBytes(Array("secret".utf8) + [5, 1, 0])
        #expect(UsernamePasswordRequest.parse(&buffer) == .credentials(username: "alice", password: "secret"))
        #expect(Array(buffer.readableBytesView) == [5, 1, 0])
        var malformed = ByteBuffer(bytes: [5, 1, 0])
        #expect(UsernamePasswordRequest.parse(&malformed) == .malformed)
    }

    @Test func credentialsCompareWholePasswords() {
        let users = ProxyCredentials(users: ["alice": "secret"])
        #expect(users.accepts(username: "alice", password: "secret"))
        #expect(!users.accepts(username: "alice", password: "secre"))
        #expect(!users.accepts(username: "alice", password: "secret!"))
        #expect(!users.accepts(username: "bob", password: "secret"))
    }

    @Test func basicProxyAuthorizationIsDecoded() {
        #expect(HTTPConnectNegotiation.basicCredentials("Basic Ym9iOnMzY3JldA==").map { [$0.0, $0.1] } == ["bob", "s3cret"])
        #expect(HTTPConnectNegotiation.basicCredentials("basic Ym9iOmE6Yg==").map { [$0.0, $0.1] } == ["bob", "a:b"])
        #expect(HTTPConnectNegotiation.basicCredentials("Bearer x") == nil)
        #expect(HTTPConnectNegotiation.basicCredentials("Basic !!!") == nil)
    }

    @Test func socks5UDPDatagramsParseAndEncode() throws {
        var datagram = ByteBuffer(bytes: [0, 0, 0, 3, 11] + Array("example.com".utf8) + [0, 53])
        datagram.writeString("query")
        #expect(SOCKS5UDPDatagram.parse(datagram) == .datagram(Destination(host: "example.com", port: 53), payload: ByteBuffer(string: "query")))
        #expect(SOCKS5UDPDatagram.parse(ByteBuffer(bytes: [0, 0, 1, 1, 10, 0, 0, 1, 0, 53])) == .fragment)
        #expect(SOCKS5UDPDatagram.parse(ByteBuffer(bytes: [0, 1, 0, 1, 10, 0, 0, 1, 0, 53])) == .malformed)
        #expect(SOCKS5UDPDatagram.parse(ByteBuffer(bytes: [0, 0, 0, 1, 10, 0])) == .malformed)
        let source = try SocketAddress(ipAddress: "2001:db8::1", port: 4433)
        let encoded = SOCKS5UDPDatagram.encode(from: source, payload: ByteBuffer(string: "answer"), allocator: ByteBufferAllocator())
        #expect(SOCKS5UDPDatagram.parse(encoded) == .datagram(Destination(host: "2001:db8::1", port: 4433), payload: ByteBuffer(string: "answer")))
    }

    @Test func resolvedAddressesAreCheckedAgainstDeniedNetworksOnly() {
        let policy = DestinationPolicy(allow: [.domain("example.com")], deny: [.network(IPNetwork(bytes: [10, 0, 0, 0], prefix: 8))])
        #expect(policy.permits(Destination(host: "www.example.com", port: 53)))
        #expect(policy.permitsResolved("93.184.216.34"), "the allow list of names is not asked about the address")
        #expect(!policy.permitsResolved("10.1.2.3"), "a denied network stays denied behind a name")
    }
}
