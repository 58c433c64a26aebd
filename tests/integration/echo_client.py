"""MPTCP echo clients that wait for the join: ``echo_client.py VIP PORT CONNS SIZE MIN_SUBFLOWS SOURCE_PORT [LINGER]``.

VIP may be IPv4 or IPv6.
Run inside the client namespace; prints a JSON list with one result per
connection. Like mptcp_lb.traffic, but it sends the request header before
waiting for the join: a stock client opens joins only once the connection is
fully established, which takes a DSS from the server, and a DIP with no
ADD_ADDR to announce says nothing until it has something to acknowledge.
SOURCE_PORT 0 lets the kernel pick; otherwise connection i binds
SOURCE_PORT + i. LINGER (seconds, default 0) leaves the client's end of the
stream open until the DIP's has closed, and that long after: the DIP then
closes its subflows first and holds their 4-tuples in TIME_WAIT.
"""

import hashlib
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mptcp_lb import echo_protocol
from mptcp_lb.mptcp_sockopt import accepted_subflow_count, mptcp_socket


def one(vip: str, port: int, size: int, min_subflows: int, source_port: int, i: int, linger: float = 0) -> dict:
    payload = os.urandom(size)
    try:
        ipv6 = ":" in vip
        with mptcp_socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as sock:
            sock.settimeout(10)
            if source_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("::" if ipv6 else "0.0.0.0", source_port + i))
            sock.connect((vip, port))
            sock.sendall(echo_protocol.encode_header(size))
            deadline = time.monotonic() + 5
            count = accepted_subflow_count(sock)
            while count < min_subflows and time.monotonic() < deadline:
                time.sleep(0.005)
                count = accepted_subflow_count(sock)
            sock.sendall(payload)
            if not linger:
                sock.shutdown(socket.SHUT_WR)
            reply = echo_protocol.read_reply(sock)  # to the DIP's DATA_FIN: with linger, the first one sent
            time.sleep(linger)
    except Exception as e:
        return {"error": repr(e)}
    return {"verified": reply["sha256"] == hashlib.sha256(payload).hexdigest() and reply["bytes"] == size,
            "reply": reply, "client_subflows": count, "bytes_sent": size}


def main() -> None:
    vip, (port, conns, size, min_subflows, source_port) = sys.argv[1], map(int, sys.argv[2:7])
    linger = float(sys.argv[7]) if len(sys.argv) > 7 else 0
    with ThreadPoolExecutor(4) as pool:
        results = pool.map(lambda i: one(vip, port, size, min_subflows, source_port, i, linger), range(conns))
        print(json.dumps(list(results)))


if __name__ == "__main__":
    main()
