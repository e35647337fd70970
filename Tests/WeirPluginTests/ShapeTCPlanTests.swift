import Testing
import WeirCore
import WeirStages

@testable import WeirShapers

/// shape.tc's options, the classes a config asks for, and the plan that takes the kernel there; no kernel.
@Suite struct ShapeTCPlanTests {
    let loader = ConfigLoader(registry: BuiltinStages.registry)

    func document(_ options: String) -> String {
        "pipelines:\n  p:\n    stages:\n      - type: shape.tc\n        interface: eth0\n" + options
    }

    func config(_ options: String) throws -> ShapeTCConfig {
        let pipelines = try loader.loadPipelines(yaml: document(options), name: "t.yaml")
        return try #require(pipelines.first?.stages.first?.config as? ShapeTCConfig)
    }

    func errors(_ yaml: String) -> [String] {
        do {
            _ = try loader.loadPipelines(yaml: yaml, name: "t.yaml")
            Issue.record("expected errors")
            return []
        } catch {
            return error.diagnostics.map(\.description)
        }
    }

    // MARK: - Options

    @Test func ratesAreBytesPerSecondAndCeilDefaultsToRate() throws {
        let config = try config("        rate: 50mbit\n")
        #expect(config.rate == 6_250_000)
        #expect(config.ceil == 6_250_000)
        #expect(config.direction == .egress)
        #expect(config.per == .pipeline)
        #expect(config.maxClients == 1024)
        #expect(config.idleTimeout == .seconds(300))
        #expect(RateText.bits(config.rate) == "50mbit")
        #expect(RateText.bits(187_500) == "1.50mbit")
    }

    @Test func classesReadTheirMatches() throws {
        let config = try config(
            """
                    rate: 90mbit
                    ceil: 100mbit
                    classes:
                      - {name: bulk, rate: 5mbit, ceil: 50mbit, match: {mark: 0x20}}
                      - {name: voice, rate: 1mbit, match: {dscp: 46, protocol: udp}}
                      - {name: web, rate: 20mbit, ceil: 100mbit, match: {port: 8000-8100, mark: 0x100, mark_mask: 0xff00}}

            """)
        #expect(config.classes.map(\.name) == ["bulk", "voice", "web"])
        #expect(config.classes[0].match.mark == 0x20)
        #expect(config.classes[0].match.markMask == 0xFFFF_FFFF)
        #expect(config.classes[1].ceil == config.classes[1].rate)
        #expect(config.classes[1].match.dscp == 46)
        #expect(config.classes[1].match.proto == "udp")
        #expect(config.classes[2].match.ports == 8000...8100)
        #expect(config.classes[2].match.markMask == 0xFF00)
    }

    @Test func badOptionsAreReportedWithTheirLocations() {
        let found = errors(
            document(
                """
                        rate: 10mbit
                        ceil: 5mbit
                        direction: sideways
                        total: 1gbit
                        classes:
                          - {name: default, rate: 1mbit, match: {mark: 1}}
                          - {name: a, rate: 20mbit, ceil: 20mbit, match: {}}
                          - {name: b, rate: 1mbit, match: {port: 70000}}
                          - {name: c, rate: 1mbit, match: {mark: 0x1ff, mark_mask: 0xff}}

                """))
        let expected = [
            "t.yaml:8:20: pipelines.p.stages[0] (shape.tc): direction: \"sideways\" is not one of egress, ingress, both",
            "t.yaml:12:58: pipelines.p.stages[0] (shape.tc): classes[1].match: match needs at least one of: mark, dscp, protocol, port",
            "t.yaml:13:50: pipelines.p.stages[0] (shape.tc): classes[2].match.port: expected a port (443) or a range (8000-8100), found \"70000\"",
            "t.yaml:14:43: pipelines.p.stages[0] (shape.tc): classes[3].match: mark 0x1ff has bits outside mark_mask 0xff",
        ]
        #expect(found == expected, "\(found)")
        // Checks across options run once each option is valid on its own.
        let ceil = errors(document("        rate: 10mbit\n        ceil: 5mbit\n"))
        #expect(ceil == ["t.yaml:7:15: pipelines.p.stages[0] (shape.tc): ceil: ceil (5mbit) is below rate (10mbit)"], "\(ceil)")
    }

    @Test func classesMayNotPromiseMoreThanTheStage() {
        let found = errors(
            document(
                """
                        rate: 10mbit
                        per: pipeline
                        classes:
                          - {name: default, rate: 1mbit, match: {mark: 1}}
                          - {name: a, rate: 8mbit, ceil: 20mbit, match: {mark: 2}}
                          - {name: b, rate: 8mbit, match: {mark: 3}}

                """))
        #expect(found.contains { $0.contains("classes[0].name: \"default\" is the name of one of the stage's own classes") }, "\(found)")
        #expect(found.contains { $0.contains("classes[1].ceil: the class's ceil (20mbit) is above the stage's (10mbit)") }, "\(found)")
        #expect(found.contains { $0.contains("classes: the classes guarantee 17mbit in all, more than the stage's rate (10mbit)") }, "\(found)")
    }

    @Test func placementNeedsAnInterfaceOrAListener() {
        let found = errors("pipelines:\n  p:\n    stages:\n      - type: shape.tc\n        rate: 1mbit\n")
        #expect(found.count == 1)
        #expect(found.first?.contains("interface: required in a pipeline without a listen.* stage") == true, "\(found)")
        let total = errors(document("        rate: 1mbit\n        total: 5mbit\n"))
        #expect(total.first?.contains("total only applies with per: client_ip or per: mark") == true, "\(total)")
    }

    // MARK: - Classes

    @Test func aPipelineStageHasATopClassAndADefaultLeaf() throws {
        let shape = StageShape(config: try config("        rate: 20mbit\n        ceil: 40mbit\n"), listener: (8443, .stream))
        #expect(shape.scopeProtocol == 6 && shape.scopePort == 8443)
        #expect(shape.classes.map(\.key) == ["total", "default"])
        #expect(shape.classes[0].rate == 2_500_000 && shape.classes[0].ceil == 5_000_000 && !shape.classes[0].isLeaf)
        #expect(shape.classes[1].parent == "total" && shape.classes[1].isLeaf)
    }

    @Test func namedClassesLeaveTheRestOfTheRateToDefault() throws {
        let shape = StageShape(
            config: try config("        rate: 40mbit\n        classes:\n          - {name: a, rate: 10mbit, match: {port: 80}}\n"), listener: nil)
        #expect(shape.scopePort == 0)
        #expect(shape.classes.map(\.key) == ["total", "class:a", "default"])
        #expect(shape.classes.last?.rate == 3_750_000)  // 30mbit
        #expect(shape.rules.map(\.classKey) == ["class:a"])
        // Classes that take the whole rate still leave default 1% of it: HTB needs a rate.
        let full = StageShape(
            config: try config("        rate: 40mbit\n        classes:\n          - {name: a, rate: 40mbit, match: {port: 80}}\n"), listener: nil)
        #expect(full.classes.last?.rate == 50_000)
    }

    @Test func perClientClassesTakeTheRatesAndTotalCapsThem() throws {
        let shape = StageShape(config: try config("        rate: 10mbit\n        ceil: 20mbit\n        per: client_ip\n        total: 1gbit\n"), listener: nil)
        #expect(shape.hasDynamicClasses)
        #expect(shape.classes[0].rate == 125_000_000 && shape.classes[0].ceil == 125_000_000)
        let client = shape.dynamicClass(DynamicKey(family: 4, bytes: [10, 0, 0, 7] + [UInt8](repeating: 0, count: 12)))
        #expect(client.key == "client:10.0.0.7" && client.label == "10.0.0.7")
        #expect(client.rate == 1_250_000 && client.ceil == 2_500_000 && client.parent == "total")
        #expect(DynamicKey.mark(0x20).label == "mark:0x20")
        var v6 = [UInt8](repeating: 0, count: 16)
        v6[0] = 0x20
        v6[1] = 0x01
        v6[15] = 1
        #expect(DynamicKey(family: 6, bytes: v6).label == "2001::1")
    }

    @Test func clientRatesFirstMatchWinsAndNamedAddressesAreConfiguredClients() throws {
        let shape = StageShape(config: try config("""
                    rate: 100mbit
                    per: client_ip
                    client_rates:
                      - {clients: [10.0.0.9, 10.0.1.0/24], rate: 1mbit}
                      - {clients: [10.0.1.5, 10.0.2.5, "fd00::5"], rate: 2mbit}
                      - {clients: [10.0.2.0/24, 10.0.0.9], rate: 3mbit}

            """), listener: nil)
        let rate = { (address: String) in
            shape.dynamicClass(DynamicKey(client: try! IPNetwork.parse(address)), rates: shape.clientRateIndex).rate / 125_000
        }
        // An earlier network beats a later single address; an earlier single address beats a later network.
        #expect(rate("10.0.1.5") == 1 && rate("10.0.2.5") == 2 && rate("10.0.2.6") == 3 && rate("10.0.0.9") == 1)
        #expect(rate("fd00::5") == 2 && rate("10.9.9.9") == 100)
        // The index and the list agree.
        for address in ["10.0.1.5", "10.0.2.5", "10.0.2.6", "10.0.0.9", "fd00::5", "10.9.9.9"] {
            let key = DynamicKey(client: try IPNetwork.parse(address))
            #expect(shape.dynamicClass(key) == shape.dynamicClass(key, rates: shape.clientRateIndex))
        }
        // Single addresses get their classes with the stage, once each; networks wait for their clients' packets.
        #expect(shape.configuredClients.map(\.label) == ["10.0.0.9", "10.0.1.5", "10.0.2.5", "fd00::5"])
        #expect(StageShape(config: try config("        rate: 10mbit\n        per: mark\n"), listener: nil).configuredClients.isEmpty)
    }

    @Test func aNamedClientRateIsOneClassItsClientsShare() throws {
        let shape = StageShape(config: try config("""
                    rate: 100gbit
                    per: client_ip
                    client_rates:
                      - {name: carol.laptop, clients: [10.88.0.2, "fd88::2"], rate: 8mbit}
                      - {clients: [10.88.0.3], rate: 4mbit}

            """), listener: nil)
        let shared = try #require(shape.classes.first { $0.key == "rate:carol.laptop" })
        #expect(shared.label == "carol.laptop" && shared.rate == 1_000_000 && shared.isLeaf && shared.parent == "total")
        #expect(shape.sharedMembers.map(\.client.label) == ["10.88.0.2", "fd88::2"] && shape.sharedMembers.allSatisfy { $0.key == shared.key })
        #expect(shape.configuredClients.map(\.label) == ["10.88.0.3"], "named entries' clients are in their class, not one of their own")

        let stage = "        rate: 1mbit\n        per: client_ip\n        classes:\n          - {name: voip, rate: 100kbit, match: {dscp: 46}}\n        client_rates:\n"
        let network = errors(document(stage + "          - {name: office, clients: [10.0.0.0/24], rate: 1mbit}\n"))
        #expect(network.count == 1 && network[0].contains("10.0.0.0/24 is a network"), "\(network)")
        let clashes = errors(document(stage + """
                      - {name: carol, clients: [10.0.0.1], rate: 1mbit}
                      - {name: carol, clients: [10.0.0.2], rate: 1mbit}
                      - {name: voip, clients: [10.0.0.3], rate: 1mbit}
                      - {name: default, clients: [10.0.0.4], rate: 1mbit}

            """))
        #expect(clashes.count == 3 && clashes.allSatisfy { $0.contains("already names a class") }, "\(clashes)")
        let spaced = errors(document(stage + "          - {name: \"no spaces\", clients: [10.0.0.5], rate: 1mbit}\n"))
        #expect(spaced.count == 1 && spaced[0].contains("client_rates[0].name: a name is 1-64 letters"), "\(spaced)")
    }

    // MARK: - Plan

    func htb(_ minor: UInt16, _ parent: UInt16?, _ rate: UInt64, leaf: Bool = true) -> HTBClass {
        HTBClass(minor: minor, parentMinor: parent, rate: rate, ceil: rate, isLeaf: leaf)
    }

    @Test func fromNothingParentsComeFirst() {
        let plan = ClassPlan.make(desired: [htb(3, 2, 10), htb(2, 1, 20, leaf: false), htb(4, 2, 10)], actual: [1: htb(1, nil, 1000, leaf: false)], owned: [])
        #expect(plan.steps == [.create(htb(2, 1, 20, leaf: false)), .create(htb(3, 2, 10)), .create(htb(4, 2, 10))])
    }

    @Test func theSameClassesTwiceChangeNothing() {
        let classes = [htb(2, 1, 20, leaf: false), htb(3, 2, 10)]
        let actual = Dictionary(uniqueKeysWithValues: (classes + [htb(1, nil, 1000, leaf: false)]).map { ($0.minor, $0) })
        #expect(ClassPlan.make(desired: classes, actual: actual, owned: [2, 3]).isEmpty)
    }

    @Test func ratesChangeInPlaceAndOnlyOwnedClassesAreDeleted() {
        let actual: [UInt16: HTBClass] = [
            1: htb(1, nil, 1000, leaf: false), 2: htb(2, 1, 20, leaf: false), 3: htb(3, 2, 10), 4: htb(4, 2, 5),
            9: htb(9, 1, 7, leaf: false),  // another stage's
        ]
        let plan = ClassPlan.make(desired: [htb(2, 1, 20, leaf: false), htb(3, 2, 15)], actual: actual, owned: [2, 3, 4])
        #expect(plan.steps == [.delete(htb(4, 2, 5)), .change(htb(3, 2, 15))])
    }

    @Test func removalDeletesChildrenBeforeParents() {
        let actual: [UInt16: HTBClass] = [1: htb(1, nil, 1000, leaf: false), 2: htb(2, 1, 20, leaf: false), 3: htb(3, 2, 10), 4: htb(4, 2, 5)]
        let plan = ClassPlan.make(desired: [], actual: actual, owned: [2, 3, 4])
        #expect(plan.steps == [.delete(htb(3, 2, 10)), .delete(htb(4, 2, 5)), .delete(htb(2, 1, 20, leaf: false))])
    }

    @Test func aClassUnderAnotherParentIsRecreated() {
        let actual: [UInt16: HTBClass] = [1: htb(1, nil, 1000, leaf: false), 2: htb(2, 1, 20, leaf: false), 3: htb(3, 1, 10)]
        let plan = ClassPlan.make(desired: [htb(2, 1, 20, leaf: false), htb(3, 2, 10)], actual: actual, owned: [2, 3])
        #expect(plan.steps == [.delete(htb(3, 1, 10)), .create(htb(3, 2, 10))])
    }
}
