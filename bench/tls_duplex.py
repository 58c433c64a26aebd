"""Fresh OpenFlow TLS connections read and written from two threads: ``python -m bench.tls_duplex [N]``.

os-ken's native hub reads a switch in one thread and writes it in another.
This opens N connections with the OpenFlow test PKI, unserialized (the
``ssl.SSLSocket`` os-ken gets by itself) and through ``SerializedTLSSocket``
side by side, runs an opening like OpenFlow's on each (the controller's
messages go out while its reader takes the switch's 8 bytes at a time), and
prints how many connections lost their stream. Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import sys
import tempfile
import threading
import time

from mininet_topos.harness import TestPki
from ryu_app.tls_socket import SerializedTLSSocket

MESSAGES, SIZE = 20, 16
OURS = b"".join(bytes([i]) * SIZE for i in range(MESSAGES))
THEIRS = b"".join(bytes([100 + i]) * SIZE for i in range(MESSAGES))


@contextlib.contextmanager
def tls_pair(pki: TestPki, serialize: bool = True):
    """(controller side, switch side) after a mutual-certificate handshake, as os-ken's server makes it."""
    settings = pki.controller_settings()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(settings["cert"], settings["privkey"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(settings["ca_cert"])
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.load_verify_locations(os.path.join(pki.dir, "ca/controllerca/cacert.pem"))
    client_ctx.load_cert_chain(*reversed(pki.switch_files()))
    accepted = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:
        thread = threading.Thread(target=lambda: accepted.update(
            sock=server_ctx.wrap_socket(listener.accept()[0], server_side=True)))
        thread.start()
        client = client_ctx.wrap_socket(socket.create_connection(listener.getsockname()))
        thread.join(10)
    client.settimeout(10)
    server = accepted["sock"]
    server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as os-ken's Datapath does
    server.settimeout(5)
    if serialize:
        server = SerializedTLSSocket(server)
        server.settimeout(5)
    try:
        yield server, client
    finally:
        client.close()
        server.close()


def recv_exactly(sock, n: int, step: int = 65536) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(min(step, n - len(got)))
        if not chunk:
            raise EOFError(f"end of stream after {len(got)} of {n} bytes")
        got += chunk
    return got


def opening(server, client) -> str | None:
    """Both ways at once from the first byte; None if every byte arrived, else what went wrong.

    The controller side is os-ken's: a reader already waiting and a writer, each in its own thread.
    """
    problems = []

    def write():
        try:
            for i in range(MESSAGES):
                server.sendall(OURS[SIZE * i:SIZE * (i + 1)])
                time.sleep(0.0005 * (i % 3))
        except OSError as e:
            problems.append(f"controller's write: {e!r}")

    def read():
        try:
            if recv_exactly(server, len(THEIRS), step=8) != THEIRS:  # os-ken reads a header, then the rest
                problems.append("the controller read garbled bytes")
        except (OSError, EOFError) as e:
            problems.append(f"controller's read: {e!r}")
    threads = [threading.Thread(target=read), threading.Thread(target=write)]
    for t in threads:
        t.start()
    try:
        for i in range(MESSAGES):
            client.sendall(THEIRS[SIZE * i:SIZE * (i + 1)])
        if recv_exactly(client, len(OURS)) != OURS:
            problems.append("the switch read garbled bytes")
    except (OSError, EOFError) as e:
        problems.append(f"switch's read: {e!r}")
    for t in threads:
        t.join(10)
    return "; ".join(problems) or None


def lost_streams(n: int) -> dict:
    """Of ``n`` fresh connections each way, how many lost their stream, unserialized and serialized."""
    with tempfile.TemporaryDirectory() as tmp:
        pki = TestPki(tmp)
        pki.create()
        lost = {"unserialized": 0, "serialized": 0}
        for _ in range(n):
            for kind in lost:  # side by side: the same load for both
                with tls_pair(pki, serialize=kind == "serialized") as (server, client):
                    lost[kind] += opening(server, client) is not None
    return {"connections": n, "lost_streams": lost}


def main() -> None:
    print(json.dumps(lost_streams(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)))


if __name__ == "__main__":
    main()
