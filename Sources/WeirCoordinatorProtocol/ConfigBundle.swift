import Crypto
import Foundation

/// Everything the coordinator wants one agent to run: drop-in files, by name. The agent writes them to its
/// managed folder and loads them like its own drop-ins.
public struct ConfigBundle: Codable, Sendable, Equatable {
    public struct File: Codable, Sendable, Equatable {
        /// A file name without folders, ending in `.yaml`.
        public var name: String
        public var content: String

        public init(name: String, content: String) {
            self.name = name
            self.content = content
        }
    }

    /// The content hash: equal content, equal version, whatever order the files came in.
    public let version: String
    /// Sorted by name.
    public let files: [File]

    public init(files: [File]) {
        let sorted = files.sorted { $0.name < $1.name }
        self.files = sorted
        self.version = Self.version(of: sorted)
    }

    /// The first 16 bytes of SHA-256 over each file's name and content, each prefixed by its length so no
    /// two different bundles hash the same text.
    static func version(of files: [File]) -> String {
        var hasher = SHA256()
        for file in files {
            for part in [file.name, file.content] {
                let bytes = Array(part.utf8)
                var length = UInt64(bytes.count).bigEndian
                withUnsafeBytes(of: &length) { hasher.update(bufferPointer: $0) }
                hasher.update(data: bytes)
            }
        }
        return hasher.finalize().prefix(16).map { String(format: "%02x", $0) }.joined()
    }

    /// A name the agent may write: no folders, no hidden files, `.yaml`.
    public static func isValidFileName(_ name: String) -> Bool {
        name.hasSuffix(".yaml") && !name.hasPrefix(".") && name.count <= 128
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
    }

    /// The version an agent reports after checking the files it received: a bundle is only applied when
    /// the version it claims is the hash of what it carries.
    public var isIntact: Bool { Self.version(of: files) == version && files.allSatisfy { Self.isValidFileName($0.name) } }
}
