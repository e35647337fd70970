# Writes Sources/WeirCoordinator/API/openapi.json: python3 tools/openapi.py > Sources/WeirCoordinator/API/openapi.json
# The integration test CoordinatorTests.openAPIMatchesRoutes checks every operation against a running coordinator.
import json
def ref(n): return {"$ref": f"#/components/schemas/{n}"}
def resp(desc, schema=None, code="200"):
    r = {"description": desc}
    if schema: r["content"] = {"application/json": {"schema": schema}}
    return {code: r}
err = {"description": "error", "content": {"application/json": {"schema": ref("Error")}}}
def op(summary, responses, body=None, params=None, write=False, opid=None):
    o = {"summary": summary, "operationId": opid, "responses": dict(responses)}
    o["responses"].update({"401": err})
    if write: o["responses"]["403"] = err
    if body:
        o["requestBody"] = {"required": True, "content": body}
        o["responses"]["413"] = {"description": "body larger than coordinator.max_request_body (default 16MiB)", "content": err["content"]}
    if params: o["parameters"] = params
    return o
def p(name, desc): return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}, "description": desc}
J = lambda s: {"application/json": {"schema": s}}
strmap = {"type": "object", "additionalProperties": {"type": "string"}}
doc = {
 "openapi": "3.1.0",
 "info": {"title": "Weir coordinator API", "version": "1",
          "description": "Agents, enrollment tokens, API tokens, pipeline documents and their assignments, named lists, relays. Every operation except this document needs `Authorization: Bearer <API token>`; tokens with role viewer may only GET and see secret option values in documents as `<redacted>`; role operator may change everything but API and enrollment tokens."},
 "servers": [{"url": "/"}],
 "security": [{"bearer": []}],
 "paths": {
  "/api/v1/openapi.json": {"get": {"summary": "This document", "operationId": "getOpenAPI", "security": [], "responses": resp("OpenAPI document", {"type": "object"})}},
  "/api/v1/agents": {"get": op("List agents with status", resp("agents", {"type": "array", "items": ref("Agent")}), opid="listAgents")},
  "/api/v1/agents/{id}": {
     "get": op("One agent", {**resp("agent", ref("Agent")), "404": err}, params=[p("id", "agent id")], opid="getAgent"),
     "delete": op("Remove an agent from the registry (it must enroll again)", {"204": {"description": "removed"}, "404": err}, params=[p("id", "agent id")], write=True, opid="deleteAgent")},
  "/api/v1/agents/{id}/traffic": {"get": op("Per-pipeline counters and health from the agent's last heartbeat", {**resp("by pipeline id", {"type": "object", "additionalProperties": ref("PipelineReport")}), "404": err}, params=[p("id", "agent id")], opid="getAgentTraffic")},
  "/api/v1/agents/{id}/revoke": {"post": op("Revoke the agent's credential and close its connection", {**resp("revoked", strmap), "404": err}, params=[p("id", "agent id")], write=True, opid="revokeAgent")},
  "/api/v1/agents/{id}/labels": {"put": op("Set operator labels (merged over enrollment and announced labels)", {**resp("agent", ref("Agent")), "400": err, "404": err}, body=J(strmap), params=[p("id", "agent id")], write=True, opid="setAgentLabels")},
  "/api/v1/labels": {"get": op("Label keys and values in use, with agent counts", resp("labels", {"type": "object", "additionalProperties": {"type": "object", "additionalProperties": {"type": "integer"}}}), opid="listLabels")},
  "/api/v1/enrollment-tokens": {
     "get": op("List enrollment tokens (without secrets)", resp("tokens", {"type": "array", "items": ref("EnrollmentToken")}), opid="listEnrollmentTokens"),
     "post": op("Create an enrollment token; the secret is in this response only", {**resp("created", ref("EnrollmentTokenCreated"), "201"), "400": err}, body=J(ref("EnrollmentTokenRequest")), write=True, opid="createEnrollmentToken")},
  "/api/v1/enrollment-tokens/{id}": {"delete": op("Delete an enrollment token", {"204": {"description": "deleted"}, "404": err}, params=[p("id", "token id")], write=True, opid="deleteEnrollmentToken")},
  "/api/v1/tokens": {
     "get": op("List API tokens (without secrets)", resp("tokens", {"type": "array", "items": ref("APIToken")}), opid="listAPITokens"),
     "post": op("Create an API token; the secret is in this response only", {**resp("created", ref("APITokenCreated"), "201"), "400": err}, body=J(ref("APITokenRequest")), write=True, opid="createAPIToken")},
  "/api/v1/tokens/{id}": {"delete": op("Delete an API token", {"204": {"description": "deleted"}, "404": err}, params=[p("id", "token id")], write=True, opid="deleteAPIToken")},
  "/api/v1/pipelines": {"get": op("List pipeline documents", resp("documents", {"type": "array", "items": ref("PipelineDocument")}), opid="listPipelines")},
  "/api/v1/pipelines/{name}": {
     "get": op("One pipeline document", {**resp("document", ref("PipelineDocument")), "404": err}, params=[p("name", "document name")], opid="getPipeline"),
     "put": op("Create or replace a pipeline document (a drop-in file: a `pipelines:` map). Validated with the agent's validator; 422 lists every error with file, line, column and key path.",
               {**resp("replaced", ref("PipelineDocument")), **resp("created", ref("PipelineDocument"), "201"), "400": err, "422": err},
               body={"application/yaml": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object", "required": ["document"], "properties": {"document": {"type": "string"}}}}},
               params=[p("name", "document name: 1-64 letters, digits, '-' or '_'")], write=True, opid="putPipeline"),
     "delete": op("Delete a pipeline document and its assignments", {"204": {"description": "deleted"}, "404": err}, params=[p("name", "document name")], write=True, opid="deletePipeline")},
  "/api/v1/lists": {"get": op("List named lists", resp("lists", {"type": "array", "items": ref("NamedList")}), opid="listLists")},
  "/api/v1/lists/{name}": {
     "get": op("One named list", {**resp("list", ref("NamedList")), "404": err}, params=[p("name", "list name")], opid="getList"),
     "put": op("Create or replace a named list; entries are checked by enforce.nftables' rules (422 lists every error)", {**resp("replaced", ref("NamedList")), **resp("created", ref("NamedList"), "201"), "400": err, "422": err}, body=J(ref("ListRequest")), params=[p("name", "list name: 1-64 letters, digits, '-' or '_'")], write=True, opid="putList"),
     "delete": op("Delete a named list; refused (409) while a pipeline document uses it", {"204": {"description": "deleted"}, "404": err, "409": err}, params=[p("name", "list name")], write=True, opid="deleteList")},
  "/api/v1/lists/{name}/entries": {"post": op("Add and remove entries (matched by address or domain)", {**resp("list", ref("NamedList")), "400": err, "404": err, "422": err}, body=J(ref("ListChange")), params=[p("name", "list name")], write=True, opid="changeListEntries")},
  "/api/v1/relays": {
     "get": op("List relays (without their keys)", resp("relays", {"type": "array", "items": ref("Relay")}), opid="listRelays"),
     "post": op("Create a relay: renders the entry agents' and the exit agent's pipelines with a generated key and pushes them", {**resp("created", ref("Relay"), "201"), "400": err, "409": err, "422": err}, body=J(ref("RelayRequest")), write=True, opid="createRelay")},
  "/api/v1/relays/{name}": {
     "get": op("One relay", {**resp("relay", ref("Relay")), "404": err}, params=[p("name", "relay name")], opid="getRelay"),
     "delete": op("Delete a relay and its pipelines", {"204": {"description": "deleted"}, "404": err}, params=[p("name", "relay name")], write=True, opid="deleteRelay")},
  "/api/v1/assignments": {
     "get": op("List assignments", resp("assignments", {"type": "array", "items": ref("Assignment")}), opid="listAssignments"),
     "post": op("Assign a pipeline document to one agent or to a label selector", {**resp("created", ref("Assignment"), "201"), "400": err, "404": err}, body=J(ref("AssignmentRequest")), write=True, opid="createAssignment")},
  "/api/v1/assignments/{id}": {"delete": op("Delete an assignment", {"204": {"description": "deleted"}, "404": err}, params=[p("id", "assignment id")], write=True, opid="deleteAssignment")},
 },
 "components": {
  "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
  "schemas": {
   "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "details": {"type": "array", "items": {"type": "string"}}}},
   "PipelineReport": {"type": "object", "properties": {k: {"type": "number"} for k in ["bytes_in", "bytes_out", "connections_total", "connections_active", "errors_total"]} | {"health": {"type": "string"}}},
   "Agent": {"type": "object", "required": ["id", "labels", "online", "status", "desired_version"], "properties": {
      "id": {"type": "string"}, "labels": strmap, "version": {"type": "string"}, "facts": strmap, "online": {"type": "boolean"},
      "revoked": {"type": "boolean"}, "last_seen": {"type": "number", "description": "Unix time"}, "enrolled_at": {"type": "number"},
      "desired_version": {"type": "string"}, "applied_version": {"type": ["string", "null"]}, "nacked_version": {"type": ["string", "null"]},
      "last_error": {"type": ["string", "null"]}, "status": {"type": "string", "enum": ["in_sync", "pending", "refused"]},
      "pipelines": {"type": "object", "additionalProperties": ref("PipelineReport")}}},
   "EnrollmentToken": {"type": "object", "properties": {"id": {"type": "string"}, "labels": strmap, "expires_at": {"type": ["number", "null"]}, "uses_left": {"type": ["integer", "null"]}, "created_at": {"type": "number"}}},
   "EnrollmentTokenCreated": {"allOf": [ref("EnrollmentToken"), {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}]},
   "EnrollmentTokenRequest": {"type": "object", "properties": {"labels": strmap, "ttl": {"type": "string", "example": "24h"}, "uses": {"type": "integer", "minimum": 1}}},
   "APIToken": {"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "role": {"type": "string", "enum": ["admin", "operator", "viewer"]}, "created_at": {"type": "number"}}},
   "APITokenCreated": {"allOf": [ref("APIToken"), {"type": "object", "required": ["token"], "properties": {"token": {"type": "string"}}}]},
   "APITokenRequest": {"type": "object", "required": ["name", "role"], "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["admin", "operator", "viewer"]}}},
   "PipelineDocument": {"type": "object", "properties": {"name": {"type": "string"}, "document": {"type": "string"}, "updated_at": {"type": "number"}}},
   "Assignment": {"type": "object", "properties": {"id": {"type": "string"}, "pipeline": {"type": "string"}, "agent": {"type": ["string", "null"]}, "selector": {"type": ["string", "null"], "example": "role=edge,site=fra"}, "created_at": {"type": "number"}}},
   "ListEntry": {"oneOf": [{"type": "string", "example": "9.9.9.0/24"}, {"type": "object", "properties": {"address": {"type": "string"}, "domain": {"type": "string"}, "protected": {"type": "boolean"}, "allow_private": {"type": "boolean"}}}]},
   "NamedList": {"type": "object", "properties": {"name": {"type": "string"}, "entries": {"type": "array", "items": ref("ListEntry")}, "updated_at": {"type": "number"}}},
   "ListRequest": {"type": "object", "required": ["entries"], "properties": {"entries": {"type": "array", "items": ref("ListEntry")}}},
   "ListChange": {"type": "object", "properties": {"add": {"type": "array", "items": ref("ListEntry")}, "remove": {"type": "array", "items": ref("ListEntry")}}},
   "RelayExit": {"type": "object", "required": ["agent", "listen", "address"], "properties": {"agent": {"type": "string"}, "listen": {"type": "string", "example": "0.0.0.0:8388"}, "address": {"type": "string", "example": "exit.example.net:8388"}}},
   "Relay": {"type": "object", "properties": {"name": {"type": "string"}, "entry": {"type": "object", "properties": {"agent": {"type": ["string", "null"]}, "selector": {"type": ["string", "null"]}}}, "exit": ref("RelayExit"), "listen": {"type": "string"}, "target": {"type": "string"}, "cipher": {"type": "string"}, "created_at": {"type": "number"}}},
   "RelayRequest": {"type": "object", "required": ["name", "entry", "exit", "listen", "target"], "properties": {"name": {"type": "string"}, "entry": {"type": "object", "description": "exactly one of agent and selector", "properties": {"agent": {"type": "string"}, "selector": {"type": "string"}}}, "exit": ref("RelayExit"), "listen": {"type": "string", "example": "0.0.0.0:1080"}, "target": {"type": "string", "example": "10.0.0.5:443"}, "cipher": {"type": "string", "enum": ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]}}},
   "AssignmentRequest": {"type": "object", "required": ["pipeline"], "properties": {"pipeline": {"type": "string"}, "agent": {"type": "string"}, "selector": {"type": "string"}}, "description": "exactly one of agent and selector"},
  }}}
print(json.dumps(doc, indent=1))
