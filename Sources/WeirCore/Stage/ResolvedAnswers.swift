import NIOConcurrencyHelpers

/// An answer a DNS stage is about to give a client, for the stages that follow what clients resolve.
public struct ResolvedAnswer: Sendable {
    /// The client's address (4 or 16 bytes).
    public let client: [UInt8]
    /// The client's group in the DNS stage; nil for the default group.
    public let group: String?
    /// The name the client asked for (lower case, no trailing dot).
    public let name: String
    /// The answer's addresses (4 or 16 bytes) with their TTLs in seconds.
    public let addresses: [(bytes: [UInt8], ttl: UInt32)]

    public init(client: [UInt8], group: String?, name: String, addresses: [(bytes: [UInt8], ttl: UInt32)]) {
        self.client = client
        self.group = group
        self.name = name
        self.addresses = addresses
    }
}

/// A stage that must know an answer's addresses before the client does (an allowlist that lets the client
/// reach exactly what it resolved).
public protocol ResolvedAnswerFollower: AnyObject, Sendable {
    /// Called before the answer is released; false when the follower could not take the addresses (its set is
    /// full of live entries): the DNS stage then answers SERVFAIL rather than give an address that will not
    /// work.
    func admit(_ answer: ResolvedAnswer) async -> Bool
}

/// Who follows which DNS pipeline's answers, in this process. Followers register when they start and leave
/// when they stop; the DNS stage asks for its followers on every answer with addresses.
public final class ResolvedAnswerFollowers: Sendable {
    public static let shared = ResolvedAnswerFollowers()

    private let followers = NIOLockedValueBox<[String: [ObjectIdentifier: any ResolvedAnswerFollower]]>([:])

    public init() {}

    public func add(_ follower: any ResolvedAnswerFollower, following pipeline: String) {
        followers.withLockedValue { $0[pipeline, default: [:]][ObjectIdentifier(follower)] = follower }
    }

    public func remove(_ follower: any ResolvedAnswerFollower, following pipeline: String) {
        followers.withLockedValue { all in
            all[pipeline]?.removeValue(forKey: ObjectIdentifier(follower))
            if all[pipeline]?.isEmpty == true { all.removeValue(forKey: pipeline) }
        }
    }

    /// Whether anything follows `pipeline` (asked for every query: no array made).
    public func isFollowed(_ pipeline: String) -> Bool {
        followers.withLockedValue { all in all[pipeline].map { !$0.isEmpty } ?? false }
    }

    public func of(_ pipeline: String) -> [any ResolvedAnswerFollower] {
        followers.withLockedValue { all in all[pipeline].map { Array($0.values) } ?? [] }
    }
}
