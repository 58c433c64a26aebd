"""Framing of the DIP echo service, shared by the server (dip_agent) and the client (traffic).

Request: an 8-byte big-endian payload length, the payload, then the client
shuts down writing. Reply: one JSON line naming the DIP, the byte count and
SHA-256 of what arrived, and the subflows that carried it. The hash lets the
client prove every byte crossed the load balancer intact; the subflow list
lets tests ask the DIP (not the MUX) where each subflow ended.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct

HEADER = struct.Struct("!Q")
DEFAULT_MAX_PAYLOAD = 1 << 30  # 1 GiB
MAX_REPLY = 1 << 20  # a reply is a few hundred bytes; anything this long is garbage
_CHUNK = 1 << 16


class ProtocolError(ValueError):
    """The peer sent something that is not a valid request or reply."""


# ------------------------------------------------------------------ pure


def encode_header(length: int) -> bytes:
    if not 0 <= length < 1 << 64:
        raise ValueError(f"payload length {length} does not fit the 8-byte header")
    return HEADER.pack(length)


def decode_header(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> int:
    """Payload length from a header, refusing lengths above ``max_payload``."""
    if len(data) != HEADER.size:
        raise ProtocolError(f"header is {len(data)} bytes, expected {HEADER.size}")
    (length,) = HEADER.unpack(data)
    if length > max_payload:
        raise ProtocolError(f"payload length {length} exceeds the maximum {max_payload}")
    return length


def make_reply(dip_id: int, nbytes: int, sha256: str, subflows: list[tuple[str, str]],
               token: int | None = None) -> dict:
    """What the DIP saw: its id, the bytes' hash, the subflows it terminated and the MPTCP token."""
    return {"dip": dip_id, "bytes": nbytes, "sha256": sha256, "token": token,
            "subflows": [{"local": local, "remote": remote} for local, remote in subflows]}


def encode_reply(reply: dict) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def decode_reply(line: bytes) -> dict:
    """Parse and check a reply line; ProtocolError says which field is wrong."""
    try:
        reply = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"reply is not JSON: {e}") from e
    if not isinstance(reply, dict):
        raise ProtocolError(f"reply is not a JSON object: {reply!r}")
    for key, kind in (("dip", int), ("bytes", int), ("sha256", str), ("subflows", list)):
        if not isinstance(reply.get(key), kind) or isinstance(reply.get(key), bool):
            raise ProtocolError(f"reply field {key!r} is missing or not a {kind.__name__}: {reply.get(key)!r}")
    for i, sf in enumerate(reply["subflows"]):
        if not (isinstance(sf, dict) and isinstance(sf.get("local"), str) and isinstance(sf.get("remote"), str)):
            raise ProtocolError(f"reply subflows[{i}] is not {{'local': str, 'remote': str}}: {sf!r}")
    return reply


# ------------------------------------------------------------------ on a socket


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes; ProtocolError if the peer closes first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), _CHUNK))
        if not chunk:
            raise ProtocolError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def send_request(sock: socket.socket, payload: bytes) -> None:
    """Send header and payload (the caller shuts down writing afterwards)."""
    sock.sendall(encode_header(len(payload)))
    sock.sendall(payload)


def read_request(sock: socket.socket, max_payload: int = DEFAULT_MAX_PAYLOAD) -> tuple[int, str]:
    """Read one request, hashing as it streams in; return (bytes, sha256 hex)."""
    length = decode_header(recv_exact(sock, HEADER.size), max_payload)
    digest = hashlib.sha256()
    remaining = length
    while remaining:
        chunk = sock.recv(min(remaining, _CHUNK))
        if not chunk:
            raise ProtocolError(f"connection closed after {length - remaining} of {length} payload bytes")
        digest.update(chunk)
        remaining -= len(chunk)
    return length, digest.hexdigest()


def read_to_eof(sock: socket.socket, limit: int = MAX_REPLY) -> int:
    """Read and drop what the peer still sends until it closes; the byte count (at most ``limit``)."""
    n = 0
    while n <= limit:
        chunk = sock.recv(_CHUNK)
        if not chunk:
            return n
        n += len(chunk)
    raise ProtocolError(f"more than {limit} bytes after the request")


def read_reply(sock: socket.socket) -> dict:
    """Read the reply line up to EOF (the server closes after replying)."""
    buf = bytearray()
    while True:
        chunk = sock.recv(_CHUNK)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REPLY:
            raise ProtocolError(f"reply longer than {MAX_REPLY} bytes")
    if not buf.endswith(b"\n"):
        raise ProtocolError(f"reply is not a complete line ({len(buf)} bytes before EOF)")
    return decode_reply(bytes(buf))
