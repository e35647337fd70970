import Foundation

/// The JSON that libnftables reads and writes, as a value: rules are built from it, compared by their
/// canonical text, and parsed back from listings.
indirect enum NftJSON: Hashable, Sendable, ExpressibleByStringLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    case object([(String, NftJSON)])
    case array([NftJSON])
    case string(String)
    case number(Int)
    case bool(Bool)
    case null

    init(stringLiteral value: String) { self = .string(value) }
    init(integerLiteral value: Int) { self = .number(value) }
    init(arrayLiteral elements: NftJSON...) { self = .array(elements) }
    init(dictionaryLiteral elements: (String, NftJSON)...) { self = .object(elements) }

    static func == (a: NftJSON, b: NftJSON) -> Bool { a.text == b.text }
    func hash(into hasher: inout Hasher) { hasher.combine(text) }

    /// Compact JSON with keys in the order given: the same value always renders the same text.
    var text: String {
        var output = ""
        write(to: &output)
        return output
    }

    private func write(to output: inout String) {
        switch self {
        case .object(let pairs):
            output += "{"
            for (index, (key, value)) in pairs.enumerated() {
                if index > 0 { output += "," }
                Self.writeString(key, to: &output)
                output += ":"
                value.write(to: &output)
            }
            output += "}"
        case .array(let items):
            output += "["
            for (index, item) in items.enumerated() {
                if index > 0 { output += "," }
                item.write(to: &output)
            }
            output += "]"
        case .string(let value): Self.writeString(value, to: &output)
        case .number(let value): output += String(value)
        case .bool(let value): output += value ? "true" : "false"
        case .null: output += "null"
        }
    }

    private static func writeString(_ value: String, to output: inout String) {
        output += "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": output += "\\\""
            case "\\": output += "\\\\"
            case "\n": output += "\\n"
            case "\t": output += "\\t"
            default:
                if scalar.value < 0x20 {
                    output += String(format: "\\u%04x", scalar.value)
                } else {
                    output.unicodeScalars.append(scalar)
                }
            }
        }
        output += "\""
    }

    /// Parses libnftables output.
    static func parse(_ text: String) throws -> NftJSON {
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
        return from(object)
    }

    private static func from(_ value: Any) -> NftJSON {
        switch value {
        case let dictionary as [String: Any]: return .object(dictionary.sorted { $0.key < $1.key }.map { ($0.key, from($0.value)) })
        case let array as [Any]: return .array(array.map(from))
        case let string as String: return .string(string)
        case let number as NSNumber: return .number(number.intValue)
        default: return .null
        }
    }

    subscript(key: String) -> NftJSON? {
        guard case .object(let pairs) = self else { return nil }
        return pairs.first { $0.0 == key }?.1
    }

    var string: String? { if case .string(let value) = self { return value } else { return nil } }
    var int: Int? { if case .number(let value) = self { return value } else { return nil } }
    var array: [NftJSON]? { if case .array(let value) = self { return value } else { return nil } }
}
