import Testing
import WeirCore
import WeirStages

/// Secret option values are replaced where they are written; everything else, comments included, stays.
@Suite struct SecretRedactionTests {
    let redaction = SecretRedaction(registry: BuiltinStages.registry)

    @Test("passwords, users' passwords and auth headers become <redacted>; names, comments and other options stay")
    func inPlace() {
        let document = """
            # entry of the relay
            pipelines:
              entry:
                stages:
                  - type: listen.socks5
                    address: 0.0.0.0:1080
                    users: {alice: "s3cr\\"et", bob: 'it''s'}   # two users
                  - type: transform.aead
                    side: client
                    cipher: chacha20-ietf-poly1305
                    password: hunter2-hunter2
                  - type: transform.websocket
                    side: client
                    path: /tunnel
                    headers:
                      Authorization: Bearer abc.def
                  - type: connect.tcp
                    addresses: [10.0.0.1:443]
            """
        let redacted = redaction.redact(document)
        for secret in ["s3cr", "it''s", "hunter2", "abc.def"] { #expect(!redacted.contains(secret), "\(secret) in\n\(redacted)") }
        for kept in ["# entry of the relay", "# two users", "alice: <redacted>", "bob: <redacted>", "password: <redacted>",
                     "Authorization: <redacted>", "cipher: chacha20-ietf-poly1305", "addresses: [10.0.0.1:443]"] {
            #expect(redacted.contains(kept), "\(kept) missing in\n\(redacted)")
        }
    }

    @Test("secrets through anchors, block scalars and multi-line values are redacted too (the document is rewritten)")
    func awkwardForms() {
        let anchored = """
            x-secret: &pw hunter2-hunter2
            pipelines:
              p:
                stages:
                  - {type: listen.tcp, address: 127.0.0.1:9000}
                  - type: transform.aead
                    side: client
                    password: *pw
                  - {type: connect.tcp, addresses: [10.0.0.1:443]}
            """
        let block = anchored.replacingOccurrences(of: "x-secret: &pw hunter2-hunter2\n", with: "")
            .replacingOccurrences(of: "password: *pw", with: "password: |\n          hunter2-hunter2\n          line-two")
        let folded = anchored.replacingOccurrences(of: "x-secret: &pw hunter2-hunter2\n", with: "")
            .replacingOccurrences(of: "password: *pw", with: "password: hunter2\n          continued-plain")
        // The anchor is redacted where it is written; the document keeps its form.
        #expect(redaction.redact(anchored).contains("x-secret: &pw <redacted>"), "\(redaction.redact(anchored))")
        for document in [anchored, block, folded] {
            let redacted = redaction.redact(document)
            #expect(!redacted.contains("hunter2") && !redacted.contains("line-two") && !redacted.contains("continued-plain"), "\(redacted)")
            #expect(redacted.contains("<redacted>") && redacted.contains("10.0.0.1:443"), "\(redacted)")
        }
    }

    @Test("a document without secrets is returned as written; one that does not parse is withheld")
    func unchangedAndUnparsable() {
        let plain = "pipelines:\n  p:\n    stages:\n      - {type: listen.tcp, address: 127.0.0.1:9000}  # note\n"
        #expect(redaction.redact(plain) == plain)
        let broken = "pipelines: {p: {stages: [{type: transform.aead, password: \"hunter2\"\n"
        #expect(!redaction.redact(broken).contains("hunter2"))
    }
}
