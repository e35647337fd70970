#!/usr/bin/env python3
"""Writes the seed inputs of each weir-fuzz target to fuzz/corpus/<target>/ (valid openings and messages the
fuzzer mutates from). Inputs the fuzzer found (crashes made regression inputs) live beside them."""
import json, os, struct, sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fuzz", "corpus")

def write(target, name, data):
    folder = os.path.join(root, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

def client_hello(name):
    sni = name.encode()
    server_name = struct.pack("!HBH", len(sni) + 3, 0, len(sni)) + sni
    extensions = struct.pack("!HH", 0, len(server_name)) + server_name
    body = b"\x03\x03" + b"\x11" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00" + struct.pack("!H", len(extensions)) + extensions
    handshake = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake

# The first byte of an opening input sets the size of the pieces it arrives in.
write("socks5", "connect-ipv4", b"\x05\x05\x01\x02\x01\x05alice\x06secret\x05\x01\x00\x01\x7f\x00\x00\x01\x1f\x90ping")
write("socks5", "connect-domain", b"\x07\x05\x01\x02\x01\x05alice\x06secret\x05\x01\x00\x03\x0bexample.com\x00\x50")
write("socks5", "udp-associate", b"\x03\x05\x01\x02\x01\x05alice\x06secret\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
write("socks5", "wrong-password", b"\x02\x05\x01\x02\x01\x05alice\x05wrong")
write("http-connect", "connect", "\x05CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n\r\nhello")
write("http-connect", "no-auth", "\x09CONNECT [2001:db8::1]:22 HTTP/1.1\r\n\r\n")
write("http-connect", "get", "\x03GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
write("tls-sni", "route-a", b"\x06" + client_hello("a.example"))
write("tls-sni", "wildcard", b"\x0d" + client_hello("x.b.example"))
write("tls-sni", "no-route", b"\x01" + client_hello("unknown.example"))
write("websocket", "upgrade-and-frames",
      b"\x0b" + b"GET /tunnel HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
      b"Sec-WebSocket-Version: 13\r\n\r\n" + b"\x82\x85\x01\x02\x03\x04" + bytes(a ^ b for a, b in zip(b"hello", b"\x01\x02\x03\x04\x01"))
      + b"\x89\x80\x00\x00\x00\x00" + b"\x88\x82\x00\x00\x00\x00\x03\xe8")
write("websocket", "wrong-path", b"\x05GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n")
# aead: odd first byte = the harness seals the rest (an address header and data), even = raw ciphertext.
write("aead", "sealed-ipv4", b"\x01\x05\x01\x7f\x00\x00\x01\x1f\x90hello")
write("aead", "sealed-domain", b"\x03\x03\x0bexample.com\x01\xbbdata")
write("aead", "raw", b"\x00" + bytes(range(80)))
write("socks5-udp", "ipv4", b"\x00\x00\x00\x01\x7f\x00\x00\x01\x00\x35payload")
write("socks5-udp", "domain", b"\x00\x00\x00\x03\x0bexample.com\x00\x35q")
write("socks5-udp", "ipv6", b"\x00\x00\x00\x04" + b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01\x00\x35x")
write("padding", "frames", b"\x05" + struct.pack("!HB", 5, 3) + b"hello" + b"\x00" * 3 + struct.pack("!HB", 2, 0) + b"hi")

def dns_response(rtype, rdata_list, rcode=0):
    header = struct.pack("!HHHHHH", 7, 0x8180 | rcode, 1, len(rdata_list), 0, 0)
    question = b"\x03svc\x07example\x03net\x00" + struct.pack("!HH", rtype, 1)
    answers = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", rtype, 1, 60, len(r)) + r for r in rdata_list)
    return header + question + answers
write("dns", "a", dns_response(1, [bytes([11, 0, 0, 2]), bytes([11, 0, 0, 3])]))
write("dns", "aaaa", dns_response(28, [bytes(16)]))
write("dns", "nxdomain", dns_response(1, [], rcode=3))
write("dns", "cname", dns_response(5, [b"\x03cdn\xc0\x10"]))

write("coordinator-messages", "hello", json.dumps({"type": "hello", "agent_id": "a", "version": "1", "labels": {"role": "edge"}, "facts": {}, "applied_version": None}))
write("coordinator-messages", "heartbeat", json.dumps({"type": "heartbeat", "applied_version": "x", "pipelines": {"p": {"bytes_in": 1, "bytes_out": 2, "connections_total": 3, "connections_active": 0, "errors_total": 0, "health": "running"}}}))
write("coordinator-messages", "bundle", json.dumps({"type": "bundle", "version": "abc", "files": [{"name": "a.yaml", "content": "pipelines: {}\n"}]}))
write("coordinator-messages", "nack", json.dumps({"type": "nack", "version": "abc", "errors": ["pipeline \"p\" failed to start"]}))
write("coordinator-messages", "welcome", json.dumps({"type": "welcome", "heartbeat_interval_seconds": 10, "credential": "c"}))
write("coordinator-requests", "relay", json.dumps({"name": "r", "entry": {"selector": "role=edge"}, "exit": {"agent": "b", "listen": "0.0.0.0:9000", "address": "b.example:9000"}, "listen": "0.0.0.0:8000", "target": "10.0.0.5:80", "cipher": "aes-256-gcm"}))
write("coordinator-requests", "assignment", json.dumps({"pipeline": "p", "selector": "role=edge,site=b"}))
write("coordinator-requests", "list", json.dumps({"entries": ["9.9.9.0/24", "example.com", {"address": "10.0.0.0/8", "allow_private": True}, {"domain": "a.example.com", "protected": True}]}))
write("coordinator-requests", "token", json.dumps({"labels": {"a": "b"}, "ttl": "24h", "uses": 2}))

samples = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plugins")
for family in sorted(os.listdir(samples)):
    for kind in sorted(os.listdir(os.path.join(samples, family))):
        folder = os.path.join(samples, family, kind)
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if name.endswith(".sample.yaml"):
                write("config", name, open(os.path.join(folder, name), "rb").read())
print("seeds written to", os.path.normpath(root))
