import Foundation
import NIOConcurrencyHelpers
import WeirCore

/// `query_log.file`: one JSON line per answer — time, client, name, type, result, the rule that decided (list and
/// line), the upstream that answered, milliseconds — appended to a file that is rotated to `FILE.1` at
/// `max_size`, so it never holds more than twice that. Lines are written by whichever task answered, one at
/// a time under a lock; a file that cannot be written is reported once and skipped.
final class QueryLog: Sendable {
    /// One line; the same keys as the ring's entries in the coordinator's API.
    struct Line: Encodable {
        var time: String
        var client: String
        var name: String
        var type: String
        var result: String
        var rule: String?
        var upstream: String?
        var ms: Double

        init(_ event: DNSQueryEvent) {
            (time, client, name, type, result) = (event.timeText, event.clientText, event.name, event.typeText, event.result)
            (rule, upstream, ms) = (event.rule, event.upstream, event.milliseconds)
        }
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

    func write(_ event: DNSQueryEvent) {
        guard var line = try? Self.encoder.encode(Line(event)) else { return }
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
