import NIOConcurrencyHelpers

/// Which running stage instances use a piece of state that outlives them (pinned maps, a pipeline's
/// nftables objects, a routing table's routes), by key. On reload, a replaced stage retires after its
/// successor started; it removes the shared state only when it was the last user.
public final class SharedStateUsers: Sendable {
    private let users = NIOLockedValueBox<[String: Set<ObjectIdentifier>]>([:])

    public init() {}

    public func add(_ user: AnyObject, _ key: String) {
        users.withLockedValue { _ = $0[key, default: []].insert(ObjectIdentifier(user)) }
    }

    /// Removes the user; true when nobody uses the state any more.
    public func remove(_ user: AnyObject, _ key: String) -> Bool {
        users.withLockedValue { users in
            users[key]?.remove(ObjectIdentifier(user))
            if users[key]?.isEmpty ?? true {
                users[key] = nil
                return true
            }
            return false
        }
    }

    public func isUsed(_ key: String) -> Bool { users.withLockedValue { !($0[key]?.isEmpty ?? true) } }
}
