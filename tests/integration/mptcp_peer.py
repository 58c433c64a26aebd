"""A bare MPTCP peer for kernel-behaviour tests, run inside a namespace.

``mptcp_peer.py serve``: listen on [::]:80 (IPv4 too), print ``ready``,
take one connection, print how many bytes it carried.
``mptcp_peer.py send ADDRESS CHUNKS``: connect to ADDRESS:80 and send CHUNKS
chunks of 16 KiB, one every 50 ms, so that the connection lives long enough
for the path manager's announcements and the joins they ask for.
"""

import socket
import sys
import time

PORT, CHUNK = 80, 16384


def serve() -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_MPTCP)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", PORT))
    s.listen()
    print("ready", flush=True)
    conn, _ = s.accept()
    n = 0
    while chunk := conn.recv(65536):
        n += len(chunk)
    print(n, flush=True)


def send(address: str, chunks: int) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_MPTCP) as c:
        c.connect((address, PORT))
        for _ in range(chunks):
            c.sendall(b"x" * CHUNK)
            time.sleep(0.05)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        send(sys.argv[2], int(sys.argv[3]))
