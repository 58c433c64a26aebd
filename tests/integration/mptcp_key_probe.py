"""One end of an MPTCP handshake whose keys the kernel chose, reporting what it saw.

Run inside a namespace:

- ``python mptcp_key_probe.py server ADDR PORT``: prints ``listening``, accepts
  one connection, waits for the client's one byte, prints its MPTCP_INFO as
  JSON, then closes it.
- ``python mptcp_key_probe.py client IFACE ADDR PORT``: captures IFACE with an
  AF_PACKET socket opened before connecting, connects, reads its MPTCP_INFO,
  sends one byte, waits for the server to close, and prints that MPTCP_INFO and
  the captured handshake frames (hex) as JSON. The byte orders the two: the
  server's DATA_FIN (which moves the client's rcv_nxt) comes only after the
  client read its sequence numbers, and the server's are read before it sends.

MPTCP_INFO (include/uapi/linux/mptcp.h, struct mptcp_info): u32 mptcpi_token
at offset 12, then u64 mptcpi_write_seq, mptcpi_snd_una, mptcpi_rcv_nxt.
"""

import json
import select
import socket
import struct
import sys
import time

from mptcp_lb.mptcp_sockopt import SOL_MPTCP, mptcp_socket

MPTCP_INFO = 1
_INFO = struct.Struct("=IQQQ")  # token, write_seq, snd_una, rcv_nxt
_INFO_OFFSET = 12
ETH_P_ALL = 0x0003
TIMEOUT = 15.0


def mptcp_info(sock: socket.socket) -> dict:
    raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, _INFO_OFFSET + _INFO.size)
    token, write_seq, snd_una, rcv_nxt = _INFO.unpack_from(raw, _INFO_OFFSET)
    return {"token": token, "write_seq": write_seq, "snd_una": snd_una, "rcv_nxt": rcv_nxt}


def serve(addr: str, port: int) -> None:
    with mptcp_socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((addr, port))
        listener.listen(1)
        listener.settimeout(TIMEOUT)
        print("listening", flush=True)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            if conn.recv(1) != b"x":
                raise SystemExit("the client's byte did not arrive")
            print(json.dumps(mptcp_info(conn)), flush=True)


def tcp_flags(frame: bytes, port: int) -> int | None:
    """TCP flags of an IPv4 frame to or from ``port`` (no options in the IP header here), else None."""
    if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
        return None
    l4 = 14 + (frame[14] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", frame, l4)
    return frame[l4 + 13] if port in (sport, dport) else None


def third_ack_seen(flags: list[int]) -> bool:
    """Whether the segments so far end with one without SYN that follows a SYN/ACK."""
    return len(flags) >= 2 and not flags[-1] & 0x02 and any(f & 0x12 == 0x12 for f in flags[:-1])


def connect(iface: str, addr: str, port: int) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as cap:
        cap.bind((iface, 0))
        with mptcp_socket() as sock:
            sock.settimeout(TIMEOUT)
            sock.connect((addr, port))
            info = mptcp_info(sock)
            sock.sendall(b"x")
            if sock.recv(1) != b"":
                raise SystemExit("the server sent data; it should only close")
        frames, flags = [], []
        deadline = time.monotonic() + TIMEOUT
        while not third_ack_seen(flags):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([cap], [], [], left)[0]:
                raise SystemExit(f"handshake not captured on {iface}: {[f.hex() for f in frames]}")
            frame = cap.recv(65535)
            if (f := tcp_flags(frame, port)) is not None:
                frames.append(frame)
                flags.append(f)
    print(json.dumps({"info": info, "frames": [f.hex() for f in frames]}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        connect(sys.argv[2], sys.argv[3], int(sys.argv[4]))
