"""Timed bulk upload to a DIP's echo service: ``python -m bench.bulk VIP PORT SECONDS``.

Sends about SECONDS worth of data (sized from a short probe) through the
echo protocol, so the DIP hashes every byte and the figure is goodput that
the DIP verified. Prints one JSON object.
"""

import hashlib
import json
import socket
import sys
import time

from mptcp_lb import echo_protocol
from mptcp_lb.mptcp_sockopt import mptcp_socket

CHUNK = b"\x5a" * (1 << 20)


def upload(vip: str, port: int, n_chunks: int) -> tuple[float, int]:
    """(seconds, bytes) for one verified upload of n_chunks MiB."""
    total = n_chunks * len(CHUNK)
    digest = hashlib.sha256()
    with mptcp_socket() as s:
        s.connect((vip, port))
        start = time.monotonic()
        s.sendall(echo_protocol.encode_header(total))
        for _ in range(n_chunks):
            s.sendall(CHUNK)
            digest.update(CHUNK)
        s.shutdown(socket.SHUT_WR)
        reply = echo_protocol.read_reply(s)
        elapsed = time.monotonic() - start
    if reply["sha256"] != digest.hexdigest():
        raise SystemExit("the DIP received different bytes")
    return elapsed, total


def main() -> None:
    vip, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    probe_s, probe_b = upload(vip, port, 16)
    n = max(16, int(seconds * probe_b / probe_s / len(CHUNK)))
    elapsed, total = upload(vip, port, n)
    print(json.dumps({"bytes": total, "seconds": elapsed, "gbps": total * 8 / elapsed / 1e9}))


if __name__ == "__main__":
    main()
