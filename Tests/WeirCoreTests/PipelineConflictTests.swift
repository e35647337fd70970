import Foundation
import Testing
import WeirCore
import WeirStages

/// Checks across pipelines and files: duplicate ids and listeners on overlapping addresses.
@Suite struct PipelineConflictTests {
    @Test func duplicateIDAcrossFilesNamesTheFirstLocation() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "log:\n  level: info\n")
            let a = try folder.write("pipelines.d/a.yaml", "pipelines:\n  web:\n" + tcpForward(listen: "0.0.0.0:8080"))
            let b = try folder.write(
                "pipelines.d/b.yaml", "pipelines:\n  other:\n" + tcpForward(listen: "0.0.0.0:9090") + "  web:\n"
                    + tcpForward(listen: "0.0.0.0:8081"))
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == [
                "\(b):8:3: pipelines.web: duplicate pipeline id \"web\" (first defined at \(a):2:3)"
            ])
        }
    }

    @Test func duplicateIDBetweenMainFileAndDropIn() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines:\n  web:\n" + tcpForward(listen: "0.0.0.0:8080"))
            let dropIn = try folder.write("pipelines.d/web.yaml", "pipelines:\n  web:\n" + tcpForward(listen: "0.0.0.0:8081"))
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == [
                "\(dropIn):2:3: pipelines.web: duplicate pipeline id \"web\" (first defined at \(folder.mainFile):2:3)"
            ])
        }
    }

    @Test func duplicateOfAnInvalidPipelineIsStillReported() throws {
        // Every error at once: fixing a.yaml must not reveal a duplicate id that was there all along.
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines: {}\n")
            let a = try folder.write("pipelines.d/a.yaml", "pipelines:\n  web:\n" + tcpForward(listen: "0.0.0.0:70000"))
            let b = try folder.write("pipelines.d/b.yaml", "pipelines:\n  web:\n" + tcpForward(listen: "0.0.0.0:8081"))
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == [
                "\(a):5:18: pipelines.web.stages[0] (listen.tcp): address: \"70000\" is not a port number (0-65535)",
                "\(b):2:3: pipelines.web: duplicate pipeline id \"web\" (first defined at \(a):2:3)",
            ])
        }
    }

    @Test func duplicateKeyInOneFileIsAnError() {
        let errors = pipelineErrors(
            "pipelines:\n  web:\n" + tcpForward(listen: "0.0.0.0:8080") + "  web:\n" + tcpForward(listen: "0.0.0.0:8081"),
            name: "dup.yaml")
        // YAML itself refuses the file; Yams marks the first occurrence of the key.
        #expect(errors.map(\.description) == ["dup.yaml:2:3: duplicate keys: web"])
    }

    @Test func overlappingListenersAcrossFiles() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines: {}\n")
            try folder.write("pipelines.d/a.yaml", "pipelines:\n  web:\n" + tcpForward(listen: "0.0.0.0:8080"))
            let b = try folder.write("pipelines.d/b.yaml", "pipelines:\n  api:\n" + tcpForward(listen: "127.0.0.1:8080"))
            let errors = loadErrors(folder.mainFile)
            #expect(errors.map(\.description) == [
                "\(b):4:9: pipelines.api.stages[0] (listen.tcp): address 127.0.0.1:8080 overlaps 0.0.0.0:8080 of pipeline \"web\""
            ])
        }
    }

    @Test(arguments: [
        ("0.0.0.0:8080", "0.0.0.0:8080"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("127.0.0.1:8080", "0.0.0.0:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::]:8080"),
    ])
    func overlappingTCPListenersInOneFile(first: String, second: String) {
        let errors = pipelineErrors(
            "pipelines:\n  one:\n" + tcpForward(listen: first) + "  two:\n" + tcpForward(listen: second), name: "o.yaml")
        #expect(errors.count == 1)
        #expect(errors.first?.location == WeirCore.SourceLocation(file: "o.yaml", line: 10, column: 9))
        #expect(errors.first?.path.description == "pipelines.two.stages[0] (listen.tcp)")
        #expect(errors.first?.message.hasSuffix("of pipeline \"one\"") == true)
    }

    /// A DNS server's sockets collide with listeners and other DNS servers like listeners do: bound with
    /// SO_REUSEPORT, two would share the address's clients silently instead of failing to bind.
    @Test(arguments: [
        ("listen.udp", "127.0.0.1:5353", "0.0.0.0:5353"),
        ("listen.tcp", "127.0.0.1:5353", "127.0.0.1:5353"),
        ("dns.filter", "[::]:5353", "127.0.0.1:5353"),
    ])
    func dnsServerSocketsCollideWithListeners(other: String, dnsAddress: String, otherAddress: String) {
        let otherPipeline =
            other == "dns.filter"
            ? "      - {type: dns.filter, listen: \"\(otherAddress)\", upstreams: [\"127.0.0.1:53\"]}\n"
            : "      - {type: \(other), address: \"\(otherAddress)\"}\n      - {type: connect.\(other == "listen.udp" ? "udp" : "tcp"), addresses: [\"127.0.0.1:53\"]}\n"
        let errors = pipelineErrors(
            "pipelines:\n  dns:\n    stages:\n      - {type: dns.filter, listen: \"\(dnsAddress)\", upstreams: [\"127.0.0.1:53\"]}\n  other:\n    stages:\n"
                + otherPipeline, name: "o.yaml")
        #expect(errors.map(\.path.description) == ["pipelines.other.stages[0] (\(other))"], "\(errors)")
        #expect(errors.allSatisfy { $0.message.contains(" overlaps ") && $0.message.hasSuffix("of pipeline \"dns\"") }, "\(errors)")
    }

    /// The same address spelled differently still collides: the kernel sees one address.
    @Test(arguments: [
        ("[::0]:8080", "127.0.0.1:8080"),
        ("[0:0:0:0:0:0:0:0]:8080", "[::1]:8080"),
        ("[0:0::1]:8080", "[::1]:8080"),
        ("[2001:DB8::1]:8080", "[2001:db8::1]:8080"),
    ])
    func differentlySpelledAddressesOverlap(first: String, second: String) {
        let errors = pipelineErrors(
            "pipelines:\n  one:\n" + tcpForward(listen: first) + "  two:\n" + tcpForward(listen: second), name: "o.yaml")
        #expect(errors.map(\.path.description) == ["pipelines.two.stages[0] (listen.tcp)"])
        #expect(errors.allSatisfy { $0.message.contains(" overlaps ") && $0.message.hasSuffix("of pipeline \"one\"") })
    }

    @Test(arguments: [
        ("0.0.0.0:8080", "0.0.0.0:8081"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("127.0.0.1:0", "0.0.0.0:0"),
    ])
    func distinctTCPListenersDoNotConflict(first: String, second: String) throws {
        let pipelines = try loader.loadPipelines(
            yaml: "pipelines:\n  one:\n" + tcpForward(listen: first) + "  two:\n" + tcpForward(listen: second), name: "o.yaml")
        #expect(pipelines.map(\.id) == ["one", "two"])
    }

    @Test func tcpAndUDPMayShareAPort() throws {
        let pipelines = try loader.loadPipelines(
            yaml: """
                pipelines:
                  dns-tcp:
                    stages:
                      - type: listen.tcp
                        address: 0.0.0.0:53
                      - type: connect.tcp
                        addresses: [127.0.0.53:53]
                  dns-udp:
                    stages:
                      - type: listen.udp
                        address: 0.0.0.0:53
                      - type: connect.udp
                        addresses: [127.0.0.53:53]

                """, name: "dns.yaml")
        #expect(pipelines.map(\.id) == ["dns-tcp", "dns-udp"])
    }

    @Test func overlappingUDPListeners() {
        let errors = pipelineErrors(
            """
            pipelines:
              a:
                stages:
                  - type: listen.udp
                    address: 0.0.0.0:5353
                  - type: connect.udp
                    addresses: [127.0.0.53:53]
              b:
                stages:
                  - type: listen.udp
                    address: 10.1.2.3:5353
                  - type: connect.udp
                    addresses: [127.0.0.53:53]

            """, name: "u.yaml")
        #expect(errors.map(\.description) == [
            "u.yaml:10:9: pipelines.b.stages[0] (listen.udp): address 10.1.2.3:5353 overlaps 0.0.0.0:5353 of pipeline \"a\""
        ])
    }
}

/// Kernel objects one stage holds alone: `weir validate` reports a second claim with both locations, in
/// whatever files the two pipelines are.
@Suite struct ExclusiveClaimTests {
    static func shaper(_ id: String, interface: String, direction: String = "egress") -> String {
        """
        pipelines:
          \(id):
            stages:
              - type: shape.tc
                interface: \(interface)
                direction: \(direction)
                rate: 10mbit

        """
    }

    static func allowlist(_ id: String, interfaces: String, entry: String) -> String {
        """
        pipelines:
          \(id):
            stages:
              - type: enforce.nftables
                allow_destinations:
                  interfaces: [\(interfaces)]
                  entries: [\(entry)]

        """
    }

    @Test("two whole-interface shape.tc stages on one interface and side: the second is refused, naming the first")
    func twoShapersOnOneInterface() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines: {}\n")
            let a = try folder.write("pipelines.d/a.yaml", Self.shaper("shape-a", interface: "eth0", direction: "both"))
            let b = try folder.write("pipelines.d/b.yaml", Self.shaper("shape-b", interface: "eth0"))
            try folder.write("pipelines.d/c.yaml", Self.shaper("shape-c", interface: "eth1") + Self.shaper("shape-d", interface: "eth0", direction: "ingress")
                .replacingOccurrences(of: "pipelines:\n", with: ""))
            let errors = loadErrors(folder.mainFile).map(\.description)
            #expect(errors.count == 2, "\(errors)")
            #expect(errors.contains(
                "\(b):4:9: pipelines.shape-b.stages[0] (shape.tc): shaping all traffic on eth0 egress is already taken by pipeline \"shape-a\" (stages[0] at \(a):4:9): one shape.tc stage per interface, direction and scope (use classes: for several rates)"),
                "\(errors)")
            #expect(errors.contains { $0.contains("pipelines.shape-d.stages[0] (shape.tc): shaping all traffic on eth0 ingress is already taken by pipeline \"shape-a\"") },
                "\(errors)")
        }
    }

    @Test("two egress allowlists on one interface are refused (each would drop the other's destinations); other interfaces are fine")
    func twoAllowlistsOnOneInterface() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines: {}\n")
            let a = try folder.write("pipelines.d/a.yaml", Self.allowlist("allow-a", interfaces: "eth0, eth1", entry: "9.9.9.9"))
            let b = try folder.write("pipelines.d/b.yaml", Self.allowlist("allow-b", interfaces: "eth1", entry: "1.1.1.1"))
            try folder.write("pipelines.d/c.yaml", Self.allowlist("allow-c", interfaces: "eth2", entry: "1.1.1.1"))
            let errors = loadErrors(folder.mainFile).map(\.description)
            #expect(errors == [
                "\(b):4:9: pipelines.allow-b.stages[0] (enforce.nftables): the egress allowlist of eth1 is already taken by pipeline \"allow-a\" (stages[0] at \(a):4:9): two allowlists on one interface drop each other's destinations; list them in one stage, or in a named list both pipelines' entries come from"
            ], "\(errors)")
        }
    }

    @Test("a reload that reuses an unchanged pipeline still checks its claims against a changed one")
    func claimsCheckedForReusedPipelines() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "pipelines: {}\n")
            try folder.write("pipelines.d/a.yaml", Self.shaper("shape-a", interface: "eth0"))
            try folder.write("pipelines.d/b.yaml", Self.shaper("shape-b", interface: "eth1"))
            // One loader: the second and third loads reuse a.yaml's validated pipeline.
            let loader = ConfigLoader(registry: BuiltinStages.registry)
            _ = try loader.load(path: folder.mainFile)
            try folder.write("pipelines.d/b.yaml", Self.shaper("shape-b", interface: "eth0"))
            #expect(throws: ConfigErrors.self) { _ = try loader.load(path: folder.mainFile) }
            try folder.write("pipelines.d/b.yaml", Self.shaper("shape-b", interface: "eth1"))
            #expect(try loader.load(path: folder.mainFile).pipelines.count == 2)
        }
    }
}
