import Foundation
import Testing

/// Every committed fuzz input, replayed by the ordinary build of weir-fuzz: the seeds and each input that once
/// crashed or hung a parser (kept as a regression input) must run through without a crash.
@Suite("Fuzz corpus replay")
struct FuzzCorpusTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var binary: String { (WeirProcess.binary as NSString).deletingLastPathComponent + "/weir-fuzz" }

    @Test("every target replays its committed corpus")
    func replay() throws {
        let (status, listed) = try command([Self.binary, "list"])
        #expect(status == 0, "\(listed)")
        let targets = listed.split(separator: "\n").map(String.init)
        #expect(targets.count == 12, "\(targets)")
        for target in targets {
            let corpus = Self.root.appendingPathComponent("fuzz/corpus/\(target)").path
            let files = (try? FileManager.default.contentsOfDirectory(atPath: corpus)) ?? []
            #expect(!files.isEmpty, "\(target) has a committed corpus")
            let (status, output) = try command([Self.binary, target, corpus])
            #expect(status == 0 && output.contains("\(target): \(files.count) inputs replayed"), "\(target): \(output.suffix(2000))")
        }
    }
}
