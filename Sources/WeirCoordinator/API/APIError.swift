import Foundation
import HTTPTypes
import Hummingbird

/// An API failure with its HTTP status; rendered as `{"error": "...", "details": [...]}`.
struct APIError: Error, Sendable {
    let status: HTTPResponse.Status
    let message: String
    var details: [String] = []

    static func badRequest(_ message: String, details: [String] = []) -> APIError {
        APIError(status: .badRequest, message: message, details: details)
    }
    static func notFound(_ what: String) -> APIError { APIError(status: .notFound, message: "\(what) not found") }
    static func unprocessable(_ message: String, details: [String]) -> APIError {
        APIError(status: .unprocessableContent, message: message, details: details)
    }
}

/// Turns `APIError` (and anything unexpected) into a JSON response.
struct APIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            return JSONResponse.make(ErrorBody(error: error.message, details: error.details.isEmpty ? nil : error.details), status: error.status)
        } catch let error as AgentRefusal {
            return JSONResponse.make(ErrorBody(error: error.message, details: nil), status: error.status)
        } catch let error as HTTPError {
            return JSONResponse.make(ErrorBody(error: error.body ?? "\(error.status.reasonPhrase)", details: nil), status: error.status)
        } catch {
            // The error's name and text stay in the log: they can show internals (types, paths, SQL) to a caller.
            let reference = UUID().uuidString.prefix(8).lowercased()
            context.logger.error("request failed", metadata: ["path": "\(request.uri.path)", "reference": "\(reference)", "error": "\(error)"])
            return JSONResponse.make(
                ErrorBody(error: "internal error (reference \(reference) in the coordinator's log)", details: nil), status: .internalServerError)
        }
    }
}

struct ErrorBody: Encodable {
    let error: String
    let details: [String]?
}

enum JSONResponse {
    static func make(_ value: some Encodable, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        var fields = headers
        fields[.contentType] = "application/json"
        return Response(status: status, headers: fields, body: .init(byteBuffer: ByteBuffer(bytes: data + Data("\n".utf8))))
    }
}
