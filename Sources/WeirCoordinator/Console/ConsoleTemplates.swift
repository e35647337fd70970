import Foundation
import Mustache

/// The console's pages: Mustache templates compiled into the binary (`Console/Resources/templates`). Mustache
/// escapes every `{{value}}` for HTML; the templates use no triple braces, so nothing a user typed (labels,
/// errors, names) reaches a page unescaped.
struct ConsoleTemplates: Sendable {
    let library: MustacheLibrary

    init() throws {
        let sources: [(String, [UInt8])] = [
            ("layout", PackageResources.layout_mustache), ("login", PackageResources.login_mustache),
            ("error", PackageResources.error_mustache), ("fleet", PackageResources.fleet_mustache),
            ("fleet_rows", PackageResources.fleet_rows_mustache), ("pager", PackageResources.pager_mustache),
            ("audit", PackageResources.audit_mustache), ("second_factor", PackageResources.second_factor_mustache),
            ("account", PackageResources.account_mustache), ("administrators", PackageResources.administrators_mustache),
            ("lists", PackageResources.lists_mustache), ("list", PackageResources.list_mustache), ("agent", PackageResources.agent_mustache),
            ("pipelines", PackageResources.pipelines_mustache), ("pipeline", PackageResources.pipeline_mustache),
            ("traffic", PackageResources.traffic_mustache), ("rollout_rows", PackageResources.rollout_rows_mustache),
            ("relays", PackageResources.relays_mustache), ("vpn", PackageResources.vpn_mustache),
            ("vpn_user", PackageResources.vpn_user_mustache),
        ]
        var library = MustacheLibrary()
        for (name, bytes) in sources { try library.register(String(decoding: bytes, as: UTF8.self), named: name) }
        self.library = library
    }

    func render(_ name: String, _ context: [String: Any]) -> String {
        library.render(context, withTemplate: name) ?? ""
    }

    /// Static files under /assets/: name → (content type, bytes).
    static let assets: [String: (type: String, bytes: [UInt8])] = [
        "console.css": ("text/css; charset=utf-8", PackageResources.console_css),
        "console.js": ("text/javascript; charset=utf-8", PackageResources.console_js),
    ]
}
