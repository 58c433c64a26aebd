"""Client traffic generator: MPTCP connections to a VIP whose every byte is verified by the DIP.

Run inside the client's network namespace. Each connection waits (bounded)
until the DIP has accepted ``min_subflows`` subflows before sending, so the
payload really crosses the joined subflows and the DIP lists every one. One failed connection becomes an
``{"error": ...}`` entry; it never stops the others.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mptcp_lb import echo_protocol
from mptcp_lb.mptcp_sockopt import MptcpUnavailable, accepted_subflow_count, mptcp_socket

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.01
PACING_CHUNK = 16 * 1024  # bytes per write when the sender is rate-limited

__all__ = ["run_connection", "run_many", "main"]


def _wait_for_subflows(sock: socket.socket, wanted: int, deadline: float) -> int:
    """Poll until ``wanted`` subflows are accepted by the DIP or the deadline passes; return the count."""
    count = accepted_subflow_count(sock)
    while count < wanted and time.monotonic() < deadline:
        time.sleep(POLL_INTERVAL)
        count = accepted_subflow_count(sock)
    return count


def _send_paced(sock: socket.socket, payload: bytes, rate: float) -> None:
    """Send ``payload`` at about ``rate`` bytes/s, so the connection has data in flight for a while.

    The sender is what must be limited: a limited receiver lets the whole
    payload land in socket buffers at once, and the connection goes quiet.
    """
    start = time.monotonic()
    for off in range(0, len(payload), PACING_CHUNK):
        ahead = off / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
        sock.sendall(payload[off:off + PACING_CHUNK])


def run_connection(vip: str, port: int, payload_size: int, min_subflows: int, timeout: float,
                   source_port: int = 0, rate: float = 0) -> dict:
    """One connection: connect, wait for subflows, send a random payload, check the DIP's hash.

    ``source_port`` pins the first subflow's 5-tuple (0: the kernel picks), so a
    test can send the very same 5-tuple through different MUXes. ``rate``
    (bytes/s, 0: as fast as possible) paces the payload; ``timeout`` bounds
    each socket operation and the wait for subflows.
    """
    deadline = time.monotonic() + timeout
    payload = os.urandom(payload_size)
    sent_sha = hashlib.sha256(payload).hexdigest()
    try:
        ipv6 = ":" in vip  # an IPv6 address (a name or an IPv4 address has no colon)
        with mptcp_socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as sock:
            sock.settimeout(timeout)
            if source_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::" if ipv6 else "0.0.0.0", source_port))
            sock.connect((vip, port))
            # The header goes first: the DIP's ACK of it (with a DSS option) is what makes a
            # client's connection fully established, and only then does its path manager join.
            sock.sendall(echo_protocol.encode_header(len(payload)))
            count = _wait_for_subflows(sock, min_subflows, deadline)
            if rate:
                _send_paced(sock, payload, rate)
            else:
                sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            reply = echo_protocol.read_reply(sock)
    except (OSError, echo_protocol.ProtocolError, MptcpUnavailable) as e:
        log.warning("connection to %s:%d failed: %s", vip, port, e)
        return {"error": f"{type(e).__name__}: {e}"}
    return {
        "bytes_sent": payload_size,
        "sha256_sent": sent_sha,
        "verified": reply["sha256"] == sent_sha and reply["bytes"] == payload_size,
        "reply": reply,
        "client_subflows": count,
        "min_subflows_reached": count >= min_subflows,
    }


def run_many(vip: str, port: int, conns: int, payload_size: int, min_subflows: int,
             timeout: float, parallel: int, source_port: int = 0, rate: float = 0) -> list[dict]:
    """``conns`` connections, at most ``parallel`` at a time, results in start order.

    With ``source_port``, connection i uses source port ``source_port + i``.
    """
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(run_connection, vip, port, payload_size, min_subflows, timeout,
                               source_port + i if source_port else 0, rate)
                   for i in range(conns)]
        return [f.result() for f in futures]


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} is not a positive number")
        return value
    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mptcp_lb.traffic", description=__doc__.splitlines()[0])
    parser.add_argument("--vip", required=True, help="VIP address to connect to (IPv4 or IPv6)")
    parser.add_argument("--port", type=int, default=80, help="VIP service port (default 80)")
    parser.add_argument("--conns", type=_positive(int), default=1, help="number of connections")
    parser.add_argument("--size", type=int, default=1 << 20, help="payload bytes per connection")
    parser.add_argument("--min-subflows", type=_positive(int), default=2,
                        help="subflows (initial one included) the DIP must accept before the payload is sent")
    parser.add_argument("--parallel", type=_positive(int), default=4, help="connections at a time")
    parser.add_argument("--timeout", type=_positive(float), default=10.0, help="seconds per connection")
    parser.add_argument("--source-port", type=int, default=0,
                        help="first source port (connection i uses it + i); default: kernel's choice")
    parser.add_argument("--rate", type=float, default=0,
                        help="send each payload at about this many bytes/s (default: as fast as possible)")
    args = parser.parse_args(argv)
    if args.source_port and not 1024 <= args.source_port <= 65535 - args.conns:
        parser.error(f"--source-port {args.source_port} leaves no room for {args.conns} ports below 65536")
    if not 0 <= args.size <= echo_protocol.DEFAULT_MAX_PAYLOAD:
        parser.error(f"--size {args.size} is not in 0..{echo_protocol.DEFAULT_MAX_PAYLOAD}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = run_many(args.vip, args.port, args.conns, args.size, args.min_subflows, args.timeout,
                       args.parallel, args.source_port, args.rate)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0 if all(r.get("verified") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
