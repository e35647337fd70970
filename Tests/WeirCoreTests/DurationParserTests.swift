import Foundation
import Testing
import WeirCore

@Suite struct DurationParserTests {
    @Test(arguments: [
        ("500ms", Duration.milliseconds(500)),
        ("3s", .seconds(3)),
        ("1m30s", .seconds(90)),
        ("2h", .seconds(7200)),
        ("1h2m3s", .seconds(3723)),
        ("1.5s", .milliseconds(1500)),
        ("250us", .microseconds(250)),
        ("10ns", .nanoseconds(10)),
        ("0", .zero),
        (" 3s ", .seconds(3)),
    ])
    func parsesDurations(text: String, expected: Duration) throws {
        #expect(try DurationParser.parse(text) == expected)
    }

    @Test(arguments: ["", "3", "s", "3 s", "3sec", "1d", "-1s", "1.2.3s", "fast", "3S", "ms500"])
    func refusesInvalidDurations(text: String) {
        #expect(throws: ValueError.self) { try DurationParser.parse(text) }
    }

    @Test func errorMessageQuotesTheTextAndGivesExamples() throws {
        let error = try #require(throws: ValueError.self) { try DurationParser.parse("3 days") }
        #expect(error.description == "\"3 days\" is not a duration (examples: 500ms, 3s, 1m30s)")
        let empty = try #require(throws: ValueError.self) { try DurationParser.parse("  ") }
        #expect(empty.description == "empty duration")
    }

    /// A duration too long for `Duration` is a config error, not a crash of the agent (run in a child process).
    @Test func hugeDurationIsAnErrorNotACrash() async {
        await #expect(processExitsWith: .success) {
            for text in ["9999999999h", "100000000000000000000s"] {
                do {
                    _ = try DurationParser.parse(text)
                    exit(2)  // accepted a duration Duration cannot hold
                } catch {}
            }
        }
    }
}
