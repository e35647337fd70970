import Foundation
import NIOConcurrencyHelpers

/// `query_log`: one JSON line per answer — time, client, name, type, result, the rule that decided (list and
/// line), the upstream that answered, milliseconds — appended to a file that is rotated to `FILE.1` at
/// `max_size`, so it never holds more than twice that. Lines are written by whichever task answered, one at
/// a time under a lock; a file that cannot be written is reported once and skipped.
final class QueryLog: Sendable {
    struct Entry: Encodable {
        var time: String
        var client: String
        var name: String
        var type: UInt16
        var result: String
        var rule: String?
        var upstream: String?
        var ms: Double
    }

    private let path: String
    private let maxSize: UInt64
    private let state = NIOLockedValueBox<(handle: FileHandle?, size: UInt64, failed: Bool)>((nil, 0, false))

    init(path: String, maxSize: UInt64) {
        self.path = path
        self.maxSize = maxSize
    }

    private static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return encoder
    }()

    func write(_ entry: Entry) {
        guard var line = try? Self.encoder.encode(entry) else { return }
        line.append(10)
        state.withLockedValue { state in
            if state.failed { return }
            if state.handle == nil || state.size + UInt64(line.count) > maxSize {
                if let handle = state.handle {
                    try? handle.close()
                    _ = rename(path, path + ".1")
                }
                if !FileManager.default.fileExists(atPath: path) {
                    _ = FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o640])
                }
                guard let handle = FileHandle(forWritingAtPath: path) else {
                    state.failed = true
                    return
                }
                state.size = (try? handle.seekToEnd()) ?? 0
                state.handle = handle
            }
            do {
                try state.handle?.write(contentsOf: line)
                state.size += UInt64(line.count)
            } catch {
                state.failed = true
            }
        }
    }

    func close() {
        state.withLockedValue { state in
            try? state.handle?.close()
            state.handle = nil
        }
    }
}
