import Foundation

/// Bursts of new UDP clients, from a process of its own (thousands of client sockets would crowd the test
/// runner's descriptors).
enum UDPBurst {
    /// One datagram from each of `clients` fresh sockets, sent as fast as the helper can; then waits until
    /// `quiet` seconds pass without an answer. Returns how many answers came back to the socket that sent them
    /// with its own bytes, and how many came back wrong (another client's bytes, or from another port).
    static func send(clients: Int, to port: Int, payload: Int = 40, quiet: Double = 2) throws -> (answered: Int, wrong: Int) {
        let (process, _, output) = try ConnectionHerd.python(script, ["\(port)", "\(clients)", "\(payload)", "\(quiet)"], netns: nil)
        defer { process.stopHelper() }
        let words = try output.line(timeout: 120).split(separator: " ")
        guard words.count == 3, words[0] == "answered", let answered = Int(words[1]), let wrong = Int(words[2]) else {
            throw HelperFailed("udp burst: \(words.joined(separator: " "))")
        }
        return (answered, wrong)
    }

    private static let script = ConnectionHerd.raiseLimit + """

        import select, socket, sys, time
        port, count, size, quiet = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
        clients = []
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind(("127.0.0.1", 0))
            clients.append(s)
        poller = select.epoll()
        expected = {}
        for i, s in enumerate(clients):
            poller.register(s.fileno(), select.EPOLLIN)
            expected[s.fileno()] = (s, ((b"%08d" % i) * (size // 8 + 1))[:size])
        for s in clients:
            s.sendto(expected[s.fileno()][1], ("127.0.0.1", port))
        answered = wrong = 0
        while True:
            events = poller.poll(quiet)
            if not events:
                break
            for fd, _ in events:
                s, payload = expected[fd]
                try:
                    while True:
                        data, peer = s.recvfrom(65536)
                        if data == payload and peer[1] == port:
                            answered += 1
                        else:
                            wrong += 1
                except BlockingIOError:
                    pass
        print("answered", answered, wrong, flush=True)
        """
}
