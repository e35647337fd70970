import NIOConcurrencyHelpers

/// Failed sign-ins per client address in a sliding window: at `limit` failures within `window` seconds an
/// address is refused until its oldest failure leaves the window — whatever account it tries, so one address
/// cannot guess passwords across many accounts. (Per account, the database counts failures and locks the
/// account: that holds across coordinator instances.) Bounded: at most `maxAddresses` are remembered; when
/// full, the address whose last failure is oldest is forgotten first.
struct AddressThrottle: Sendable {
    let limit: Int
    let window: Double
    let maxAddresses: Int
    private var failures: [String: [Double]] = [:]

    init(limit: Int, window: Double, maxAddresses: Int = 10_000) {
        self.limit = limit
        self.window = window
        self.maxAddresses = maxAddresses
    }

    var trackedAddresses: Int { failures.count }

    /// Seconds until `address` may try again; nil when it may now.
    mutating func retryAfter(_ address: String, now: Double) -> Double? {
        guard var times = failures[address] else { return nil }
        times.removeAll { $0 <= now - window }
        failures[address] = times.isEmpty ? nil : times
        guard times.count >= limit, let oldest = times.first else { return nil }
        return oldest + window - now
    }

    mutating func recordFailure(_ address: String, now: Double) {
        if failures[address] == nil, failures.count >= maxAddresses { forgetOldest(now: now) }
        var times = failures[address, default: []]
        times.removeAll { $0 <= now - window }
        times.append(now)
        // More than `limit` failures tell nothing more.
        if times.count > limit { times.removeFirst(times.count - limit) }
        failures[address] = times
    }

    private mutating func forgetOldest(now: Double) {
        failures = failures.filter { $0.value.last.map { $0 > now - window } ?? false }
        guard failures.count >= maxAddresses, let oldest = failures.min(by: { ($0.value.last ?? 0) < ($1.value.last ?? 0) }) else { return }
        failures[oldest.key] = nil
    }
}

/// `AddressThrottle` shared by the request handlers.
final class SignInThrottle: Sendable {
    private let state: NIOLockedValueBox<AddressThrottle>

    init(limit: Int, window: Double) { state = NIOLockedValueBox(AddressThrottle(limit: limit, window: window)) }

    func retryAfter(_ address: String, now: Double) -> Double? { state.withLockedValue { $0.retryAfter(address, now: now) } }
    func recordFailure(_ address: String, now: Double) { state.withLockedValue { $0.recordFailure(address, now: now) } }
}
