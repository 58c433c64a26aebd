"""Retire the TIME_WAIT sockets that would cost a reconnecting client its adopted key.

Key adoption needs every SYN(MP_CAPABLE) answered with a SYN cookie, but a
SYN for a 4-tuple the DIP holds in TIME_WAIT (the client reused its port
after the server closed first) reopens that TIME_WAIT with a request socket
instead, which keeps the kernel's own key: the client's joins then carry a
token no socket has. dip_tc.c drops such a SYN and names its 4-tuple in
``dip_time_wait`` with the time it did; ``TimeWaitReaper`` destroys that TIME_WAIT socket (netlink
SOCK_DESTROY, as ``ss -K`` does) so the client's retransmitted SYN, a second
later, finds only the listener and gets a cookie. The kernel retires a
TIME_WAIT for a new SYN itself (TCP_TW_SYN): only the order changes. The
program drops a 4-tuple's SYN at most once per ``WINDOW_NS``: should the
TIME_WAIT survive (a kernel without CONFIG_INET_DIAG_DESTROY), the
retransmitted SYN goes through with the kernel's key rather than be lost.

Before destroying, the socket is looked up exactly and must be in TIME_WAIT;
the destroy then names its cookie, so a 4-tuple whose TIME_WAIT is already
gone can never take the listener (which the same lookup falls back to) with
it. Netlink is spoken directly: pyroute2's DiagSocket has no SOCK_DESTROY,
and parses every reply by address family, errors included.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import threading
import time

from mptcp_lb.bpf import BpfMap

from .dip_abi import FLOW_KEY

log = logging.getLogger(__name__)

__all__ = ["TimeWaitReaper", "destroy_time_wait"]

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY, SOCK_DESTROY = 20, 21
NLMSG_ERROR, NLM_F_REQUEST, NLM_F_ACK = 2, 0x1, 0x4
TCP_TIME_WAIT = 6
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
NLMSG = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states; then struct inet_diag_sockid.
DIAG_REQ = struct.Struct("=BBBxI2s2s16s16sI2I")
# struct inet_diag_msg, as far as the sockid's cookie.
DIAG_MSG_HEAD = struct.Struct("=BBBB2s2s16s16sI2I")
WINDOW_NS = 5_000_000_000  # dip_maps.h: TIME_WAIT_RETRY_NS


def _request(sock: socket.socket, kind: int, flags: int, local: tuple[str, int], remote: tuple[str, int],
             cookie: tuple[int, int]) -> list[tuple[int, bytes]]:
    """Send one inet_diag request for the TCP socket local<->remote; the (type, payload) of each reply."""
    src = ipaddress.IPv4Address(local[0]).packed.ljust(16, b"\0")
    dst = ipaddress.IPv4Address(remote[0]).packed.ljust(16, b"\0")
    body = DIAG_REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 1 << TCP_TIME_WAIT, local[1].to_bytes(2, "big"),
                         remote[1].to_bytes(2, "big"), src, dst, 0, *cookie)
    sock.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
    data = sock.recv(65536)
    replies, off = [], 0
    while off + NLMSG.size <= len(data):
        length, mtype, _, _, _ = NLMSG.unpack_from(data, off)
        replies.append((mtype, data[off + NLMSG.size:off + length]))
        off += (length + 3) & ~3
    return replies


def _error(payload: bytes) -> int:
    return -struct.unpack_from("=i", payload)[0]


def destroy_time_wait(local: tuple[str, int], remote: tuple[str, int]) -> bool:
    """Destroy the TIME_WAIT socket local<->remote of this network namespace; False if there is none.

    Raises OSError when the kernel refuses (EOPNOTSUPP without CONFIG_INET_DIAG_DESTROY).
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(1.0)
        cookie = None
        for mtype, payload in _request(sock, SOCK_DIAG_BY_FAMILY, 0, local, remote,
                                       (INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)):
            if mtype == NLMSG_ERROR:
                if _error(payload) == errno.ENOENT:
                    return False
                raise OSError(_error(payload), f"inet_diag lookup: {errno.errorcode.get(_error(payload))}")
            fields = DIAG_MSG_HEAD.unpack_from(payload)
            if fields[1] != TCP_TIME_WAIT:
                return False  # gone already: the lookup found the listener, or a new connection
            cookie = fields[-2:]
        if cookie is None:
            return False
        for mtype, payload in _request(sock, SOCK_DESTROY, NLM_F_ACK, local, remote, cookie):
            if mtype == NLMSG_ERROR and _error(payload) not in (0, errno.ENOENT):
                raise OSError(_error(payload), f"SOCK_DESTROY: {errno.errorcode.get(_error(payload))}")
        return True


class TimeWaitReaper:
    """Polls ``dip_time_wait`` and destroys the TIME_WAIT socket of each 4-tuple in it (module docstring)."""

    def __init__(self, pending: BpfMap, *, interval: float = 0.02):
        self._pending = pending
        self.interval = interval
        self.reaped = 0
        self._handled: dict[bytes, int] = {}  # 4-tuple -> the drop time it was handled for
        self._refused = False  # logged once: the kernel cannot destroy sockets
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> int:
        """Destroy the TIME_WAIT of every 4-tuple newly dropped for one; return how many were destroyed.

        Entries stay for ``WINDOW_NS`` (the program reads them to drop a
        4-tuple's SYN only once), then go.
        """
        done, now = 0, time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
        for key in self._pending.keys():
            raw = self._pending.lookup(key)
            if raw is None:
                continue
            (dropped,) = struct.unpack("=Q", raw)
            if now - dropped >= WINDOW_NS:
                self._forget(key)
                continue
            if self._handled.get(key) == dropped:
                continue
            self._handled[key] = dropped
            client_ip, vip, client_port, vip_port = FLOW_KEY.unpack(key)
            local = (str(ipaddress.IPv4Address(vip)), int.from_bytes(vip_port, "big"))
            remote = (str(ipaddress.IPv4Address(client_ip)), int.from_bytes(client_port, "big"))
            try:
                done += destroy_time_wait(local, remote)
            except OSError as e:
                if not self._refused:
                    self._refused = True
                    log.error("cannot destroy TIME_WAIT sockets (%s): a client reusing a 4-tuple this DIP "
                              "closed first gets the kernel's key, not an adopted one, and its joins find "
                              "no token", e)
        self.reaped += done
        return done

    def _forget(self, key: bytes) -> None:
        self._handled.pop(key, None)
        try:
            self._pending.delete(key)
        except OSError:
            pass  # the LRU dropped it first

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("TimeWaitReaper already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dip-time-wait", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception:  # a transient map error must not end reaping for good
                log.exception("TIME_WAIT reaping failed")

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
