import Foundation
import WeirCore
import WeirCoordinatorProtocol

/// The coordinator's bundle on disk, under `state_dir/coordinator`:
///
///     bundles/<version>/*.yaml   one folder per bundle, written completely before it is used
///     bundle -> bundles/<version> the one the agent runs; the config loader reads bundle/*.yaml
///
/// Switching is one rename of a symlink, so a crash leaves either the old bundle or the new one, never a mix;
/// and what the agent ran last is still there when it starts without a coordinator.
struct ManagedBundle: Sendable {
    let directory: String

    private var link: String { (directory as NSString).appendingPathComponent("bundle") }
    private var bundles: String { (directory as NSString).appendingPathComponent("bundles") }

    /// The version in use, from the link's target.
    var currentVersion: String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: link)).map { ($0 as NSString).lastPathComponent }
    }

    /// Writes the bundle's files (unless that version is already on disk) and points `bundle` at them.
    /// Returns the version that was in use, for `switchTo` should the new one fail.
    @discardableResult
    func install(_ bundle: ConfigBundle) throws -> String? {
        let previous = currentVersion
        let fileManager = FileManager.default
        try fileManager.createDirectory(atPath: bundles, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        let target = (bundles as NSString).appendingPathComponent(bundle.version)
        if !fileManager.fileExists(atPath: target) {
            let staging = target + ".partial"
            try? fileManager.removeItem(atPath: staging)
            try fileManager.createDirectory(atPath: staging, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700])
            for file in bundle.files {
                let path = (staging as NSString).appendingPathComponent(file.name)
                // Documents may carry passwords (AEAD keys, proxy users): only the agent's user reads them.
                try PrivateFile.write(Array(file.content.utf8), to: path)
            }
            try fileManager.moveItem(atPath: staging, toPath: target)
        }
        try switchTo(bundle.version)
        return previous
    }

    /// Points `bundle` at an installed version, or removes the link (no bundle) for nil.
    func switchTo(_ version: String?) throws {
        guard let version else {
            try? FileManager.default.removeItem(atPath: link)
            return
        }
        let temporary = link + ".next"
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.createSymbolicLink(atPath: temporary, withDestinationPath: "bundles/" + version)
        guard rename(temporary, link) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    /// Removes every bundle folder except the one in use.
    func prune() {
        let current = currentVersion
        for name in (try? FileManager.default.contentsOfDirectory(atPath: bundles)) ?? [] where name != current {
            try? FileManager.default.removeItem(atPath: (bundles as NSString).appendingPathComponent(name))
        }
    }
}
