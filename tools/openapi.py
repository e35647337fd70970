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
          "description": "Agents, enrollment tokens, API tokens, pipeline documents and their assignments, named lists, relays, VPN servers, plans, users and devices. Every operation except this document needs `Authorization: Bearer <API token>`; tokens with role viewer may only GET and see secret option values in documents as `<redacted>`; role operator may change everything but API and enrollment tokens."},
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
  "/api/v1/vpn/servers": {"get": op("List VPN servers (with their public keys, never their private keys)", resp("servers", {"type": "array", "items": ref("VPNServer")}), opid="listVPNServers")},
  "/api/v1/vpn/servers/{name}": {
     "get": op("One VPN server", {**resp("server", ref("VPNServer")), "404": err}, params=[p("name", "server name")], opid="getVPNServer"),
     "put": op("Create or change a VPN server: a wireguard pipeline (`vpn-NAME`) for one agent or a label selector, its key generated once. Refused (409) when a device's address would fall outside the new pool.",
               {**resp("changed", ref("VPNServer")), **resp("created", ref("VPNServer"), "201"), "400": err, "409": err, "422": err}, body=J(ref("VPNServerRequest")), params=[p("name", "server name: 1-58 letters, digits, '-' or '_'")], write=True, opid="putVPNServer"),
     "delete": op("Delete a VPN server; refused (409) while it has devices", {"204": {"description": "deleted"}, "404": err, "409": err}, params=[p("name", "server name")], write=True, opid="deleteVPNServer")},
  "/api/v1/vpn/plans": {"get": op("List plans", resp("plans", {"type": "array", "items": ref("VPNPlan")}), opid="listVPNPlans")},
  "/api/v1/vpn/plans/{name}": {
     "put": op("Create or change a plan: each device's rate (shape.tc on the server's interface, both directions) and transfer quota per period", {**resp("changed", ref("VPNPlan")), **resp("created", ref("VPNPlan"), "201"), "400": err, "422": err}, body=J(ref("VPNPlanRequest")), params=[p("name", "plan name")], write=True, opid="putVPNPlan"),
     "delete": op("Delete a plan; refused (409) while users have it", {"204": {"description": "deleted"}, "404": err, "409": err}, params=[p("name", "plan name")], write=True, opid="deleteVPNPlan")},
  "/api/v1/vpn/users": {"get": op("List VPN users with their devices and usage", resp("users", {"type": "array", "items": ref("VPNUser")}), opid="listVPNUsers")},
  "/api/v1/vpn/users/{name}": {
     "get": op("One VPN user with devices and usage", {**resp("user", ref("VPNUser")), "404": err}, params=[p("name", "user name")], opid="getVPNUser"),
     "put": op("Create or change a user (plan, access profile, disabled)", {**resp("changed", ref("VPNUser")), **resp("created", ref("VPNUser"), "201"), "400": err, "404": err, "422": err}, body=J(ref("VPNUserRequest")), params=[p("name", "user name: 1-48 letters, digits, '-', '_', '.' or '@'")], write=True, opid="putVPNUser"),
     "delete": op("Delete a user and their devices (their peers leave every server in the next bundle)", {"204": {"description": "deleted"}, "404": err}, params=[p("name", "user name")], write=True, opid="deleteVPNUser")},
  "/api/v1/vpn/users/{name}/disable": {"post": op("Disable a user: their devices' peers leave every server in the next bundle; keys and addresses are kept", {**resp("user", ref("VPNUser")), "404": err}, params=[p("name", "user name")], write=True, opid="disableVPNUser")},
  "/api/v1/vpn/users/{name}/enable": {"post": op("Enable a user again", {**resp("user", ref("VPNUser")), "404": err}, params=[p("name", "user name")], write=True, opid="enableVPNUser")},
  "/api/v1/vpn/users/{name}/devices": {
     "get": op("A user's devices", {**resp("devices", {"type": "array", "items": ref("VPNDevice")}), "404": err}, params=[p("name", "user name")], opid="listVPNDevices"),
     "post": op("Add a device: an address from the server's pool per network (never shared), a key pair generated unless public_key is given", {**resp("created", ref("VPNDevice"), "201"), "400": err, "404": err, "409": err, "422": err}, body=J(ref("VPNDeviceRequest")), params=[p("name", "user name")], write=True, opid="createVPNDevice")},
  "/api/v1/vpn/users/{name}/devices/{device}": {
     "get": op("One device with usage", {**resp("device", ref("VPNDevice")), "404": err}, params=[p("name", "user name"), p("device", "device name")], opid="getVPNDevice"),
     "delete": op("Delete a device (its address goes back to the pool)", {"204": {"description": "deleted"}, "404": err}, params=[p("name", "user name"), p("device", "device name")], write=True, opid="deleteVPNDevice")},
  "/api/v1/vpn/users/{name}/devices/{device}/config": {"get": op("The device's client configuration (wg-quick format, with its private key): admin tokens only", {"200": {"description": "configuration", "content": {"text/plain": {"schema": {"type": "string"}}}}, "403": err, "404": err, "409": err}, params=[p("name", "user name"), p("device", "device name")], opid="getVPNDeviceConfig")},
  "/api/v1/vpn/users/{name}/devices/{device}/qr.png": {"get": op("The client configuration as a QR code (PNG) for the WireGuard apps: admin tokens only", {"200": {"description": "image", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}, "403": err, "404": err, "409": err}, params=[p("name", "user name"), p("device", "device name")], opid="getVPNDeviceQRPNG")},
  "/api/v1/vpn/users/{name}/devices/{device}/qr.svg": {"get": op("The client configuration as a QR code (SVG): admin tokens only", {"200": {"description": "image", "content": {"image/svg+xml": {"schema": {"type": "string"}}}}, "403": err, "404": err, "409": err}, params=[p("name", "user name"), p("device", "device name")], opid="getVPNDeviceQRSVG")},
 },
 "components": {
  "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
  "schemas": {
   "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "details": {"type": "array", "items": {"type": "string"}}}},
   "PipelineReport": {"type": "object", "properties": {k: {"type": "number"} for k in ["bytes_in", "bytes_out", "connections_total", "connections_active", "errors_total"]} | {"health": {"type": "string"}, "peers": {"type": "object", "description": "WireGuard peers by name (pipelines with a wireguard stage)", "additionalProperties": ref("VPNUsage")}}},
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
   "VPNServer": {"type": "object", "properties": {"name": {"type": "string"}, "agent": {"type": ["string", "null"]}, "selector": {"type": ["string", "null"]}, "interface": {"type": "string"}, "listen_port": {"type": "integer"}, "endpoint": {"type": "string"}, "addresses": {"type": "array", "items": {"type": "string"}}, "pool": {"type": "array", "items": {"type": "string"}}, "dns": {"type": "array", "items": {"type": "string"}}, "client_allowed_ips": {"type": "array", "items": {"type": "string"}}, "mtu": {"type": ["integer", "null"]}, "masquerade_interface": {"type": ["string", "null"]}, "public_key": {"type": "string"}, "created_at": {"type": "number"}}},
   "VPNServerRequest": {"type": "object", "required": ["endpoint", "addresses", "pool"], "description": "exactly one of agent and selector", "properties": {"agent": {"type": "string"}, "selector": {"type": "string"}, "interface": {"type": "string", "default": "wg0"}, "listen_port": {"type": "integer", "default": 51820}, "endpoint": {"type": "string", "example": "vpn.example.com:51820"}, "addresses": {"type": "array", "items": {"type": "string"}, "example": ["10.8.0.1/24"]}, "pool": {"type": "array", "items": {"type": "string"}, "example": ["10.8.0.0/24"]}, "dns": {"type": "array", "items": {"type": "string"}}, "client_allowed_ips": {"type": "array", "items": {"type": "string"}, "default": ["0.0.0.0/0", "::/0"]}, "mtu": {"type": "integer"}, "masquerade_interface": {"type": "string"}}},
   "VPNPlan": {"type": "object", "properties": {"name": {"type": "string"}, "rate": {"type": ["string", "null"]}, "ceil": {"type": ["string", "null"]}, "quota": {"type": ["string", "null"]}, "period": {"type": ["string", "null"]}, "created_at": {"type": "number"}}},
   "VPNPlanRequest": {"type": "object", "properties": {"rate": {"type": "string", "example": "20mbit"}, "ceil": {"type": "string"}, "quota": {"type": "string", "example": "50GiB"}, "period": {"type": "string", "enum": ["day", "week", "month"]}}},
   "VPNUsage": {"type": "object", "properties": {k: {"type": "number"} for k in ["receive_bytes", "transmit_bytes", "last_handshake", "period_bytes"]} | {"quota_bytes": {"type": ["number", "null"]}}},
   "VPNDevice": {"type": "object", "properties": {"user": {"type": "string"}, "name": {"type": "string"}, "server": {"type": "string"}, "peer": {"type": "string", "description": "the peer's name on the server: USER.DEVICE"}, "addresses": {"type": "array", "items": {"type": "string"}}, "public_key": {"type": "string"}, "has_private_key": {"type": "boolean"}, "created_at": {"type": "number"}, "usage": {"type": "object", "description": "by agent id, from its last heartbeat", "additionalProperties": ref("VPNUsage")}}},
   "VPNDeviceRequest": {"type": "object", "required": ["name", "server"], "properties": {"name": {"type": "string"}, "server": {"type": "string"}, "public_key": {"type": "string"}}},
   "VPNUser": {"type": "object", "properties": {"name": {"type": "string"}, "plan": {"type": ["string", "null"]}, "profile": {"type": "string", "enum": ["full", "internet_only", "intranet_only"]}, "disabled": {"type": "boolean"}, "created_at": {"type": "number"}, "devices": {"type": "array", "items": ref("VPNDevice")}, "receive_bytes": {"type": "number"}, "transmit_bytes": {"type": "number"}}},
   "VPNUserRequest": {"type": "object", "properties": {"plan": {"type": "string"}, "profile": {"type": "string", "enum": ["full", "internet_only", "intranet_only"]}, "disabled": {"type": "boolean"}}},
   "AssignmentRequest": {"type": "object", "required": ["pipeline"], "properties": {"pipeline": {"type": "string"}, "agent": {"type": "string"}, "selector": {"type": "string"}}, "description": "exactly one of agent and selector"},
  }}}
print(json.dumps(doc, indent=1))
