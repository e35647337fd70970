import WeirCore

/// Hands out single addresses from pool networks: the wireguard stage for peers without addresses, the
/// coordinator for VPN devices. Lowest free first, so a pool fills predictably and a freed address is reused.
public enum AddressPool {
    /// The lowest address of `network` after its first that is not taken (and for IPv4 not its broadcast);
    /// nil when none is left. Very large networks (an IPv6 /64) are searched in their first 2^20 addresses.
    public static func nextFree(in network: IPNetwork, taken: Set<IPNetwork>) -> IPNetwork? {
        let width = network.width
        let hostBits = width - network.prefix
        let limit = hostBits >= 20 ? 1 << 20 : (1 << hostBits) - (network.isIPv4 ? 1 : 0)
        for offset in 1..<max(limit, 1) {
            // network + offset, big-endian.
            var candidate = network.bytes
            var carry = offset
            var index = candidate.count - 1
            while carry > 0, index >= 0 {
                let sum = Int(candidate[index]) + (carry & 0xFF)
                candidate[index] = UInt8(sum & 0xFF)
                carry = (carry >> 8) + (sum >> 8)
                index -= 1
            }
            let address = IPNetwork(bytes: candidate, prefix: width)
            if !taken.contains(address) { return address }
        }
        return nil
    }
}
