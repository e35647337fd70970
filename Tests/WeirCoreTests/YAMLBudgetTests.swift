import Foundation
import Testing
import WeirCore
import WeirStages

/// Documents that cost without bound to read are refused before anything walks them.
@Suite struct YAMLBudgetTests {
    /// Ten levels of nine references: 9^10 values in a few hundred bytes.
    static func aliasBomb(asKey: Bool) -> String {
        var lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        for level in 1...9 {
            lines.append("a\(level): &a\(level) [" + Array(repeating: "*a\(level - 1)", count: 9).joined(separator: ", ") + "]")
        }
        // As a mapping key the alias is hashed by the YAML composer's duplicate check; as a value, walked by validation.
        lines += asKey ? ["? *a9", ": 1", "pipelines: {}"] : ["pipelines:", "  p:", "    stages: *a9"]
        return lines.joined(separator: "\n") + "\n"
    }

    @Test("An alias bomb is refused at the alias that exceeds the budget, quickly, as key or as value", arguments: [true, false])
    func aliasBombIsRefused(asKey: Bool) throws {
        try ConfigFolder.with { folder in
            let text = Self.aliasBomb(asKey: asKey)
            #expect(text.utf8.count < 700)
            try folder.write("weir.yaml", text)
            let started = ContinuousClock.now
            let errors = loadErrors(folder.mainFile)
            #expect(ContinuousClock.now - started < .seconds(2), "refused without expanding it")
            #expect(errors.count == 1)
            let error = try #require(errors.first)
            // a4 already stands for 9^5 values: the anchors' own definitions exceed the budget.
            #expect(error.location?.line == 5, "\(error)")
            #expect(error.description.contains("more than 10000 values once its aliases are expanded"), "\(error)")
        }
    }

    @Test("The same bomb in a drop-in names the drop-in; the main file's errors are reported too")
    func aliasBombInDropIn() throws {
        try ConfigFolder.with { folder in
            try folder.write("weir.yaml", "agent: {shutdown_grace: soon}\n")
            let dropIn = try folder.write("pipelines.d/bomb.yaml", Self.aliasBomb(asKey: false))
            let errors = loadErrors(folder.mainFile)
            #expect(errors.contains { $0.location?.file == dropIn && $0.message.contains("aliases are expanded") }, "\(errors)")
            #expect(errors.contains { $0.description.contains("shutdown_grace") }, "\(errors)")
        }
    }

    @Test("Aliases that share settings between pipelines stay well within the budget")
    func ordinaryAliasesAreAccepted() throws {
        try ConfigFolder.with { folder in
            var text = "pipelines:\n"
            for index in 0..<200 {
                text += "  p\(index):\n    stages:\n      - {type: listen.tcp, address: \"127.0.0.1:\(20000 + index)\"}\n"
                text += index == 0 ? "      - &target {type: connect.tcp, addresses: [127.0.0.1:9], connect_timeout: 2s}\n" : "      - *target\n"
            }
            try folder.write("weir.yaml", text)
            #expect(try loader.load(path: folder.mainFile).pipelines.count == 200)
        }
    }

    @Test("Nesting deeper than 64 levels is refused at the level that exceeds it")
    func deepNesting() throws {
        let text = "pipelines: " + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "\n"
        let violation = try #require(YAMLBudget().violation(in: text))
        #expect(violation.message == "nesting deeper than 64 levels")
        // The root mapping is level 1, so the 64th "[" (column 12 + 63) opens level 65.
        #expect(violation.line == 1 && violation.column == 12 + 63)
        #expect(YAMLBudget().violation(in: "a: " + String(repeating: "[", count: 60) + String(repeating: "]", count: 60)) == nil)
    }

    @Test("A document over the size limit is refused before it is parsed")
    func oversizedDocument() {
        var budget = YAMLBudget()
        budget.maxBytes = 1000
        let violation = budget.violation(in: "pipelines: {}\n" + String(repeating: "# padding\n", count: 200))
        #expect(violation?.message.contains("at most 1000 are read") == true)
    }
}
