import Foundation

/// Pieces of the YAML documents the coordinator renders (relays, VPN servers).
enum YAMLText {
    /// `text` as a double-quoted scalar (JSON string syntax, which YAML reads as is), so a user-given name
    /// or address can never break out of its value.
    static func quoted(_ text: String) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        return String(decoding: (try? encoder.encode(text)) ?? Data("\"\"".utf8), as: UTF8.self)
    }
}
