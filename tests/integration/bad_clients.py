"""Malformed echo requests, for test_dip_agent: ``bad_clients.py VIP PORT``.

An absurd length, a short payload, a short header; prints ``closed`` for each
the server hung up on without a reply, ``answered`` otherwise.
"""

import socket
import struct
import sys

from mptcp_lb.mptcp_sockopt import mptcp_socket

for data in (struct.pack("!Q", 1 << 40), struct.pack("!Q", 10) + b"abc", b"\x00"):
    with mptcp_socket() as s:
        s.settimeout(10)
        s.connect((sys.argv[1], int(sys.argv[2])))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        print("closed" if s.recv(100) == b"" else "answered")
