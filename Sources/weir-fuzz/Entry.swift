import Foundation

// Built two ways. With `-sanitize=fuzzer -D FUZZING` (`make fuzz`) libFuzzer drives the target named by
// WEIR_FUZZ_TARGET. In the ordinary build it replays inputs (a committed corpus, a crash that was found), so the
// test suite checks every one of them without the fuzzer's build.

#if FUZZING
import CWeirSystem

nonisolated(unsafe) private var selected: (@Sendable ([UInt8]) -> Void)?

/// SwiftPM links an executable's `main` to this name; libFuzzer's driver takes it from here.
@_cdecl("weir_fuzz_main")
public func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    var count = argc
    var arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments) { data, size in fuzzerTestOneInput(data, size) }
}

@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutableRawPointer, _ argv: UnsafeMutableRawPointer) -> Int32 {
    let name = ProcessInfo.processInfo.environment["WEIR_FUZZ_TARGET"] ?? ""
    guard let target = FuzzTargets.all[name] else {
        FileHandle.standardError.write(Data("WEIR_FUZZ_TARGET must be one of: \(FuzzTargets.all.keys.sorted().joined(separator: ", "))\n".utf8))
        exit(2)
    }
    selected = target
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selected?(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}
#else
/// `weir-fuzz TARGET PATH...`: runs TARGET on every file (of every folder) given; `weir-fuzz list` names them.
@main
struct Replay {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        guard let name = arguments.first else {
            FileHandle.standardError.write(Data("usage: weir-fuzz TARGET FILE-OR-FOLDER... | weir-fuzz list\n".utf8))
            exit(2)
        }
        if name == "list" {
            print(FuzzTargets.all.keys.sorted().joined(separator: "\n"))
            return
        }
        guard let target = FuzzTargets.all[name] else {
            FileHandle.standardError.write(Data("unknown target \(name); known: \(FuzzTargets.all.keys.sorted().joined(separator: ", "))\n".utf8))
            exit(2)
        }
        var files: [String] = []
        for path in arguments.dropFirst() {
            var isFolder: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else { continue }
            if isFolder.boolValue {
                let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                files += names.sorted().map { (path as NSString).appendingPathComponent($0) }
            } else {
                files.append(path)
            }
        }
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            target(Array(data))
        }
        print("\(name): \(files.count) inputs replayed")
    }
}
#endif
