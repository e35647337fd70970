import NIOConcurrencyHelpers

/// A metric family whose samples a `ScrapeCollector` writes at scrape time, outside the registry — for
/// series that come and go with kernel state (one per tracked IP address) and are too many to keep as
/// registry objects.
public struct MetricFamily: Sendable, Hashable {
    public enum Kind: String, Sendable {
        case counter, gauge
    }

    public let name: String
    public let help: String
    public let kind: Kind

    public init(_ name: String, _ kind: Kind, help: String) {
        self.name = name
        self.kind = kind
        self.help = help
    }
}

/// Writes samples when `/metrics` is scraped.
public protocol ScrapeCollector: AnyObject, Sendable {
    func collect(into exposition: inout ExpositionWriter)
}

/// Collects the samples of scrape-time families. Samples of one family from several collectors (pipelines)
/// end up together under one HELP and TYPE line, as the text format requires.
public struct ExpositionWriter {
    private var families: [MetricFamily] = []
    private var bodies: [String: [UInt8]] = [:]

    public init() {}

    /// Appends sample lines of `family`; `body` writes them, e.g. with `appendSample`.
    public mutating func write(_ family: MetricFamily, _ body: (inout [UInt8]) -> Void) {
        if bodies[family.name] == nil {
            families.append(family)
            bodies[family.name] = []
        }
        body(&bodies[family.name, default: []])
    }

    /// Appends finished sample lines of `family` without copying them when the family has none yet.
    public mutating func append(_ family: MetricFamily, lines: consuming [UInt8]) {
        if bodies[family.name] == nil {
            families.append(family)
            bodies[family.name] = lines
        } else {
            bodies[family.name]!.append(contentsOf: lines)
        }
    }

    /// The text of every family written so far.
    public func render(into output: inout [UInt8]) {
        for family in families {
            output.append(contentsOf: "# HELP \(family.name) \(family.help)\n# TYPE \(family.name) \(family.kind.rawValue)\n".utf8)
            output.append(contentsOf: bodies[family.name] ?? [])
        }
    }
}

extension Array where Element == UInt8 {
    /// `name{labels} value\n`; `labels` is already-rendered `key="value",…` text (escape values with
    /// `appendLabelValue`).
    @inlinable
    public mutating func appendSample(_ name: [UInt8], labels: [UInt8], value: UInt64) {
        append(contentsOf: name)
        append(UInt8(ascii: "{"))
        append(contentsOf: labels)
        append(contentsOf: "} ".utf8)
        appendDecimal(value)
        append(UInt8(ascii: "\n"))
    }

    /// A label value with `\`, `"` and newlines escaped.
    public mutating func appendLabelValue(_ value: String) {
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): append(contentsOf: #"\\"#.utf8)
            case UInt8(ascii: "\""): append(contentsOf: #"\""#.utf8)
            case UInt8(ascii: "\n"): append(contentsOf: #"\n"#.utf8)
            default: append(byte)
            }
        }
    }

    /// `key="value"`, escaped.
    public mutating func appendLabel(_ key: String, _ value: String) {
        append(contentsOf: key.utf8)
        append(contentsOf: "=\"".utf8)
        appendLabelValue(value)
        append(UInt8(ascii: "\""))
    }

    /// Decimal digits without going through String: scrapes write hundreds of thousands of these.
    @inlinable
    public mutating func appendDecimal(_ value: UInt64) {
        if value < 10 {
            append(UInt8(ascii: "0") &+ UInt8(value))
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        var count = 0
        var rest = value
        Swift.withUnsafeMutableBytes(of: &digits) { buffer in
            while rest > 0 {
                buffer[23 - count] = UInt8(ascii: "0") &+ UInt8(rest % 10)
                rest /= 10
                count += 1
            }
            append(contentsOf: buffer[(24 - count)...])
        }
    }
}

/// The collectors registered now, in registration order.
public final class ScrapeCollectors: Sendable {
    private let collectors = NIOLockedValueBox<[ObjectIdentifier: (order: Int, collector: any ScrapeCollector)]>([:])
    private let next = NIOLockedValueBox(0)

    public init() {}

    public func add(_ collector: any ScrapeCollector) {
        let order = next.withLockedValue { value in
            defer { value += 1 }
            return value
        }
        collectors.withLockedValue { $0[ObjectIdentifier(collector)] = (order, collector) }
    }

    public func remove(_ collector: any ScrapeCollector) {
        _ = collectors.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(collector)) }
    }

    /// Runs every collector and appends their families to `output`.
    public func render(into output: inout [UInt8]) {
        let current = collectors.withLockedValue { $0.values.sorted { $0.order < $1.order }.map(\.collector) }
        guard !current.isEmpty else { return }
        var writer = ExpositionWriter()
        for collector in current { collector.collect(into: &writer) }
        writer.render(into: &output)
    }
}
