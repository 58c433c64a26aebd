"""Bulk MPTCP transfer for throughput runs: ``serve PORT`` or ``send HOST PORT SECONDS``.

The sender writes a fixed 1 MiB buffer for SECONDS, half-closes, and waits
for the receiver's byte count, so the figure is goodput the receiver got.
Prints one JSON object.
"""

import json
import socket
import sys
import time

from mptcp_lb.mptcp_sockopt import mptcp_socket

CHUNK = 1 << 20


def serve(port: int) -> None:
    with mptcp_socket() as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("0.0.0.0", port))
        ls.listen(8)
        print(json.dumps({"listening": port}), flush=True)
        while True:
            conn, _ = ls.accept()
            with conn:
                total = 0
                while data := conn.recv(CHUNK):
                    total += len(data)
                conn.sendall(str(total).encode())


def send(host: str, port: int, seconds: float) -> None:
    buf = b"\x5a" * CHUNK
    with mptcp_socket() as s:
        s.connect((host, port))
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            s.sendall(buf)
        s.shutdown(socket.SHUT_WR)
        received = int(s.recv(64))
        elapsed = time.monotonic() - start
    print(json.dumps({"bytes": received, "seconds": elapsed, "gbps": received * 8 / elapsed / 1e9}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
