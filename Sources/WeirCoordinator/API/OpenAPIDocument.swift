/// The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json. A test walks every operation in
/// it against a running coordinator, so it cannot drift from the routes.
enum OpenAPIDocument {
    static let json = String(decoding: PackageResources.openapi_json, as: UTF8.self)
}
