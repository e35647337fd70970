import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing

@testable import WeirCore

/// connect.udp's shared name lookups, with a scripted lookup on a real event loop.
@Suite struct SharedLookupsTests {
    /// A lookup that answers only when told, and counts how often it was asked.
    final class ScriptedLookup: Sendable {
        let asked = NIOLockedValueBox<[EventLoopPromise<[SocketAddress]>]>([])

        func lookup(_ host: String, _ port: Int, _ eventLoop: any EventLoop) -> EventLoopFuture<[SocketAddress]> {
            let promise = eventLoop.makePromise(of: [SocketAddress].self)
            asked.withLockedValue { $0.append(promise) }
            return promise.futureResult
        }

        var count: Int { asked.withLockedValue { $0.count } }
        func answerLast(_ result: Result<[SocketAddress], any Error>) { asked.withLockedValue { $0.last! }.completeWith(result) }
    }

    @Test("Sessions that arrive while a lookup runs wait for it; its answer serves the next ones until it is older than the lifetime")
    func oneLookupPerBurst() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let script = ScriptedLookup()
        let lookups = SharedLookups(lifetime: .milliseconds(300)) { script.lookup($0, $1, $2) }
        let loops = Array(group.makeIterator())
        let burst = (0..<100).map { lookups.addresses(host: "dns.example", port: 53, on: loops[$0 % 2]) }
        #expect(script.count == 1, "one lookup for a burst of 100 sessions")
        let answer = [try SocketAddress(ipAddress: "192.0.2.53", port: 53)]
        script.answerLast(.success(answer))
        for session in burst { #expect(try await session.get() == answer) }
        #expect(try await lookups.addresses(host: "dns.example", port: 53, on: loops[0]).get() == answer)
        #expect(script.count == 1, "a fresh answer is reused")
        _ = lookups.addresses(host: "other.example", port: 53, on: loops[0])
        #expect(script.count == 2, "another name is looked up on its own")
        script.answerLast(.success(answer))
        try await Task.sleep(for: .milliseconds(400))
        let renewed = lookups.addresses(host: "dns.example", port: 53, on: loops[1])
        #expect(script.count == 3, "an answer older than the lifetime is asked again (a changed record is followed)")
        let changed = [try SocketAddress(ipAddress: "192.0.2.54", port: 53)]
        script.answerLast(.success(changed))
        #expect(try await renewed.get() == changed)
        try await group.shutdownGracefully()
    }

    @Test("A failed lookup fails the sessions waiting for it and is not kept")
    func failuresAreNotKept() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let script = ScriptedLookup()
        let lookups = SharedLookups { script.lookup($0, $1, $2) }
        let loop = group.next()
        let waiting = (0..<3).map { _ in lookups.addresses(host: "gone.example", port: 53, on: loop) }
        script.answerLast(.failure(ResolutionError(host: "gone.example", reason: "no such name")))
        for session in waiting { await #expect(throws: ResolutionError.self) { try await session.get() } }
        _ = lookups.addresses(host: "gone.example", port: 53, on: loop)
        #expect(script.count == 2, "the next session asks again")
        script.answerLast(.success([try SocketAddress(ipAddress: "192.0.2.1", port: 53)]))
        try await group.shutdownGracefully()
    }
}
