import NIOConcurrencyHelpers

/// A certificate file a stage loaded, with the earliest end of validity among the certificates in it (a
/// chain or a CA bundle stops being entirely valid then).
public struct LoadedCertificate: Sendable, Hashable {
    public let file: String
    /// Unix time.
    public let notAfter: Int

    public init(file: String, notAfter: Int) {
        self.file = file
        self.notAfter = notAfter
    }
}

/// `weir_tls_certificate_expiry_timestamp_seconds{pipeline,stage,file}` for every certificate the running
/// pipelines' stages loaded. Set from the running configuration after each apply, so a renewed or removed
/// file changes or drops its series with the reload that reads it — a series never outlives its file.
public final class CertificateExpiries: ScrapeCollector {
    public static let family = MetricFamily(
        "weir_tls_certificate_expiry_timestamp_seconds", .gauge,
        help: "When a certificate a stage loaded expires (Unix time; the earliest in the file).")

    private struct Entry {
        let pipeline: String
        let stage: String
        let certificate: LoadedCertificate
    }

    private let entries = NIOLockedValueBox<[Entry]>([])

    public init() {}

    /// Replaces what is reported with the certificates of `pipelines`' stages.
    public func set(running pipelines: [PipelineSpec]) {
        var fresh: [Entry] = []
        for pipeline in pipelines.sorted(by: { $0.id < $1.id }) {
            for stage in pipeline.stages {
                for certificate in stage.config.certificates {
                    fresh.append(Entry(pipeline: pipeline.id, stage: stage.type, certificate: certificate))
                }
            }
        }
        entries.withLockedValue { $0 = fresh }
    }

    public func collect(into exposition: inout ExpositionWriter) {
        let current = entries.withLockedValue { $0 }
        guard !current.isEmpty else { return }
        exposition.write(Self.family) { body in
            for entry in current {
                var labels: [UInt8] = []
                labels.appendLabel("pipeline", entry.pipeline)
                labels.append(UInt8(ascii: ","))
                labels.appendLabel("stage", entry.stage)
                labels.append(UInt8(ascii: ","))
                labels.appendLabel("file", entry.certificate.file)
                body.appendSample(Array(Self.family.name.utf8), labels: labels, value: UInt64(max(0, entry.certificate.notAfter)))
            }
        }
    }
}
