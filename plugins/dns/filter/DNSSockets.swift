import NIOConcurrencyHelpers
import NIOCore

/// Which engine answers a socket's queries; the handlers read it for every query.
final class EngineSlot: Sendable {
    private let engine: NIOLockedValueBox<DNSFilterEngine>

    init(_ engine: DNSFilterEngine) { self.engine = NIOLockedValueBox(engine) }

    var current: DNSFilterEngine {
        get { engine.withLockedValue { $0 } }
        set { engine.withLockedValue { $0 = newValue } }
    }
}

/// The sockets of each dns.filter address, shared by the stages that serve it in turn. A reload's successor
/// takes them over — its engine (new lists, new cache) answers from the next query on — instead of binding
/// sockets of its own: closing a UDP socket drops the datagrams waiting in it, which a reload under load
/// would lose. The agent stops a changed pipeline's service stages before it starts their successors, so the
/// last stage to stop leaves its sockets answering with its engine for a moment (`handOverWindow`) for a
/// successor to take; retiring (the pipeline removed, or its successor running) or the window passing closes
/// them. A successor stopped again (a reload rolled back) hands them back the same way.
final class DNSSockets: Sendable {
    static let shared = DNSSockets()
    static let handOverWindow: Duration = .seconds(5)

    private struct Entry {
        /// TCP (NIO channels) and UDP (threads of their own).
        var channels: [any Channel]
        var loops: [UDPAnswerLoop]
        var slot: EngineSlot
        /// The stages serving the address, oldest first; the last one answers.
        var owners: [(id: ObjectIdentifier, engine: DNSFilterEngine)]
        /// Bumped at every change, so a pending close knows whether the sockets were taken meanwhile.
        var generation = 0
    }

    private let entries = NIOLockedValueBox<[String: Entry]>([:])

    /// Makes `engine` answer on `address`'s sockets when they exist; false when there are none.
    func takeOver(_ address: String, owner: ObjectIdentifier, engine: DNSFilterEngine) -> Bool {
        entries.withLockedValue { entries in
            guard entries[address] != nil else { return false }
            entries[address]!.owners.append((owner, engine))
            entries[address]!.slot.current = engine
            entries[address]!.generation += 1
            return true
        }
    }

    /// Records newly bound sockets of `address`, answered by `slot`'s engine.
    func register(_ address: String, channels: [any Channel], loops: [UDPAnswerLoop], slot: EngineSlot, owner: ObjectIdentifier) {
        entries.withLockedValue { $0[address] = Entry(channels: channels, loops: loops, slot: slot, owners: [(owner, slot.current)]) }
    }

    /// `owner` stops serving `address`: the stage before it answers again; when it was the last, its engine
    /// keeps answering for `handOverWindow`, then the sockets close unless a successor took them.
    func release(_ address: String, owner: ObjectIdentifier) {
        let generation: Int? = entries.withLockedValue { entries in
            guard var entry = entries[address], entry.owners.contains(where: { $0.id == owner }) else { return nil }
            entry.owners.removeAll { $0.id == owner }
            entry.generation += 1
            if let last = entry.owners.last { entry.slot.current = last.engine }
            entries[address] = entry
            return entry.owners.isEmpty ? entry.generation : nil
        }
        guard let generation else { return }
        Task {
            try? await Task.sleep(for: Self.handOverWindow)
            await self.closeIfUnowned(address, generation: generation)
        }
    }

    /// Closes `address`'s sockets now when nobody serves them (`generation`: only if nothing changed since).
    func closeIfUnowned(_ address: String, generation: Int? = nil) async {
        let (channels, loops): ([any Channel], [UDPAnswerLoop]) = entries.withLockedValue { entries in
            guard let entry = entries[address], entry.owners.isEmpty, generation == nil || generation == entry.generation else { return ([], []) }
            entries[address] = nil
            return (entry.channels, entry.loops)
        }
        for channel in channels { try? await channel.close() }
        for loop in loops { await loop.close() }
    }
}
