import Foundation

/// The JSON files stages keep under `agent.state_dir` (one per pipeline or device), written so that a crash
/// at any point leaves the old file or the new one, and swept of what an interrupted write left behind.
public enum StateFiles {
    /// Writes `value` as JSON (sorted keys), 0600, through a temporary file and a rename.
    public static func writeJSON(_ value: some Encodable, to path: String, pretty: Bool = false) throws {
        try FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.sortedKeys, .prettyPrinted] : [.sortedKeys]
        try PrivateFile.write(Array(try encoder.encode(value)), to: path)
    }

    /// Removes the temporary files of writes a crash interrupted in `directory`: `*.tmp` (PrivateFile) and
    /// Foundation's atomic-write files (`*.tmp.XXXXXX`, or hidden names). Returns their names.
    @discardableResult
    public static func removeInterruptedWrites(in directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let leftovers = names.filter { $0.hasSuffix(".tmp") || $0.contains(".tmp.") || $0.hasPrefix(".") }
        for name in leftovers { unlink((directory as NSString).appendingPathComponent(name)) }
        return leftovers.sorted()
    }

    /// The `<name>.json` files in `directory`, by name without the extension.
    public static func names(in directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [])
            .filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.map { String($0.dropLast(5)) }.sorted()
    }
}
