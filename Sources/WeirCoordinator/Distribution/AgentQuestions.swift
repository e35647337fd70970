import Foundation
import WeirCoordinatorProtocol

/// Questions the coordinator asks a connected agent and waits for (its DNS query log): each has an id the
/// answer carries back, and a deadline — an agent that does not answer (an older one ignores what it does
/// not know) costs the caller at most `timeout`. Bounded: at most `maxPending` questions wait at once.
actor AgentQuestions {
    struct Unanswered: Error, CustomStringConvertible {
        let description: String
    }

    static let timeout = Duration.seconds(5)
    static let maxPending = 256

    private var pending: [String: (agentID: String, continuation: CheckedContinuation<DNSQueriesResponse, any Error>)] = [:]

    /// Sends the request (its id replaced by a fresh one) and waits for the answer.
    func dnsQueries(_ request: DNSQueriesRequest, over connection: AgentConnection, timeout: Duration = AgentQuestions.timeout) async throws -> DNSQueriesResponse {
        guard pending.count < Self.maxPending else { throw Unanswered(description: "too many questions to agents are waiting; try again") }
        var request = request
        request.id = UUID().uuidString
        let id = request.id
        let deadline = Task { [weak self] in
            try await Task.sleep(for: timeout)
            await self?.fail(id, Unanswered(description: "agent \"\(connection.agentID)\" did not answer within \(timeout) (an agent older than the query log does not)"))
        }
        defer { deadline.cancel() }
        return try await withCheckedThrowingContinuation { continuation in
            pending[id] = (connection.agentID, continuation)
            Task {
                do { try await connection.send(.dnsQueries(request)) } catch {
                    self.fail(id, Unanswered(description: "cannot reach agent \"\(connection.agentID)\": \(error)"))
                }
            }
        }
    }

    /// An agent's answer; one nobody waits for any more (late, unknown, or to a question asked of another
    /// agent) is dropped.
    func answered(_ response: DNSQueriesResponse, from agentID: String) {
        guard pending[response.id]?.agentID == agentID else { return }
        pending.removeValue(forKey: response.id)?.continuation.resume(returning: response)
    }

    private func fail(_ id: String, _ error: any Error) {
        pending.removeValue(forKey: id)?.continuation.resume(throwing: error)
    }
}
