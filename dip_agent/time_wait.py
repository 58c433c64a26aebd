"""Retire the TIME_WAIT sockets that would cost a reconnecting client its adopted key.

Key adoption needs every SYN(MP_CAPABLE) answered with a SYN cookie, but a
SYN for a 4-tuple the DIP holds in TIME_WAIT (the client reused its port
after the server closed first, as HTTP servers do) reopens that TIME_WAIT
with a request socket instead, which keeps the kernel's own key: the
client's joins then carry a token no socket has. With
``DIP_FLAG_REAP_TIME_WAIT`` set, dip_tc.c drops such a SYN and records it in
``dip_time_wait``; ``TimeWaitReaper`` destroys that TIME_WAIT socket
(netlink SOCK_DESTROY, as ``ss -K`` does) and forgets the record, so the
client's retransmitted SYN, a second later, finds only the listener and gets
a cookie. The kernel retires a TIME_WAIT for a SYN it accepts itself
(TCP_TW_SYN): what changes is that the listener, not the TIME_WAIT, answers.

A record whose TIME_WAIT the reaper did not destroy stays for
``TIME_WAIT_RETRY_NS``: the program then lets that SYN's retransmission
through (a kernel key rather than a lost SYN). A kernel that refuses for good
(EOPNOTSUPP without CONFIG_INET_DIAG_DESTROY, EPERM without CAP_NET_ADMIN)
makes the reaper give up once and clear the flag, so nothing is dropped for
it again.

Before destroying, the socket is looked up exactly and must be a TIME_WAIT
(its timer says so); the destroy then names its cookie, so a 4-tuple whose
TIME_WAIT is already gone can never take the listener (which the same lookup
falls back to) with it. Netlink is spoken directly: pyroute2's DiagSocket
has no SOCK_DESTROY and parses every reply by address family, errors
included.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable

from mptcp_lb.bpf import BpfMap

from .dip_abi import FLOW_KEY, TIME_WAIT_DROP, flow_ip
from .poller import IDLE_INTERVAL, Poller

log = logging.getLogger(__name__)

__all__ = ["TimeWaitReaper", "destroy_time_wait", "TIME_WAIT_RETRY_NS"]

TIME_WAIT_RETRY_NS = 5_000_000_000  # dip_maps.h
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY, SOCK_DESTROY = 20, 21
NLMSG_ERROR, NLM_F_REQUEST, NLM_F_ACK = 2, 0x1, 0x4
TCP_FIN_WAIT2, TCP_TIME_WAIT = 5, 6  # a TIME_WAIT socket reports its substate, one of these
TIMER_TIME_WAIT = 3  # inet_diag_msg.idiag_timer of a TIME_WAIT socket
INET_DIAG_NOCOOKIE = 0xFFFFFFFF
NLMSG = struct.Struct("=IHHII")
# struct inet_diag_req_v2: family, protocol, ext, pad, states; then struct inet_diag_sockid.
DIAG_REQ = struct.Struct("=BBBxI2s2s16s16sI2I")
# struct inet_diag_msg, as far as the sockid's cookie.
DIAG_MSG_HEAD = struct.Struct("=BBBB2s2s16s16sI2I")
WARN_EVERY = 10.0  # seconds between warnings of failed destroys
PERMANENT = (errno.EOPNOTSUPP, errno.EPERM)  # the kernel will never destroy sockets for this agent


def _request(sock: socket.socket, kind: int, flags: int, vip: bytes, vip_port: bytes, client: bytes,
             client_port: bytes, cookie: tuple[int, int]) -> list[tuple[int, bytes]]:
    """Send one inet_diag request for the TCP socket VIP<->client; the (type, payload) of each reply.

    The family follows the addresses: 4 bytes IPv4, 16 bytes IPv6.
    """
    family = socket.AF_INET if len(vip) == 4 else socket.AF_INET6
    body = DIAG_REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_TIME_WAIT, vip_port, client_port,
                         vip.ljust(16, b"\0"), client.ljust(16, b"\0"), 0, *cookie)
    sock.send(NLMSG.pack(NLMSG.size + len(body), kind, NLM_F_REQUEST | flags, 1, 0) + body)
    data = sock.recv(65536)
    replies, off = [], 0
    while off + NLMSG.size <= len(data):
        length, mtype, _, _, _ = NLMSG.unpack_from(data, off)
        if length < NLMSG.size or off + length > len(data):
            raise OSError(errno.EBADMSG, f"inet_diag: a reply of {length} bytes in {len(data) - off}")
        replies.append((mtype, data[off + NLMSG.size:off + length]))
        off += (length + 3) & ~3
    return replies


def _errno(payload: bytes) -> int:
    """The errno of an NLMSG_ERROR payload (0: an acknowledgement)."""
    return -struct.unpack_from("=i", payload)[0]


def destroy_time_wait(vip: bytes, vip_port: bytes, client: bytes, client_port: bytes) -> bool:
    """Destroy the TIME_WAIT socket VIP<->client of this network namespace; False if there is none.

    Addresses (4 bytes IPv4, 16 bytes IPv6) and ports in network order. Raises
    OSError when the kernel refuses (EOPNOTSUPP without CONFIG_INET_DIAG_DESTROY).
    """
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(1.0)
        tuple_ = (vip, vip_port, client, client_port)
        cookie = None
        for mtype, payload in _request(sock, SOCK_DIAG_BY_FAMILY, 0, *tuple_, (INET_DIAG_NOCOOKIE,) * 2):
            if mtype == NLMSG_ERROR:
                code = _errno(payload)
                if code == errno.ENOENT:
                    return False  # no socket at all, or no TCP diag handler (tcp_diag): nothing destroyed
                raise OSError(code, f"inet_diag lookup: {errno.errorcode.get(code, code)}")
            if len(payload) < DIAG_MSG_HEAD.size:
                raise OSError(errno.EBADMSG, f"inet_diag: a socket reply of {len(payload)} bytes")
            _, state, timer, *_, c0, c1 = DIAG_MSG_HEAD.unpack_from(payload)
            if timer != TIMER_TIME_WAIT or state not in (TCP_FIN_WAIT2, TCP_TIME_WAIT):
                return False  # gone already: the lookup found the listener, or a new connection
            cookie = (c0, c1)
        if cookie is None:
            return False
        for mtype, payload in _request(sock, SOCK_DESTROY, NLM_F_ACK, *tuple_, cookie):
            code = _errno(payload) if mtype == NLMSG_ERROR else 0
            if code == errno.ENOENT:
                return False  # it expired between the lookup and the destroy
            if code:
                raise OSError(code, f"SOCK_DESTROY: {errno.errorcode.get(code, code)}")
        return True


class TimeWaitReaper(Poller):
    """Polls ``dip_time_wait`` and destroys the TIME_WAIT socket of each SYN dropped for one (module docstring).

    ``unsupported`` is called once if the kernel cannot destroy sockets (the
    caller clears DIP_FLAG_REAP_TIME_WAIT, so the program stops dropping).
    Idle, it polls every ``idle_interval`` (``dip_agent.poller``), well
    before a dropped SYN's retransmission a second later.
    """

    name = "dip-time-wait"

    def __init__(self, pending: BpfMap, unsupported: Callable[[], None], *, interval: float = 0.02,
                 idle_interval: float = IDLE_INTERVAL):
        super().__init__(interval, idle_interval)
        self._pending = pending
        self._unsupported = unsupported
        self.reaped = 0  # TIME_WAIT sockets destroyed
        self.failed = 0  # destroys the kernel refused
        self.gave_up = False  # the kernel refuses for good: the program no longer drops
        self._kept: dict[bytes, int] = {}  # 4-tuple -> the drop (ns) kept, its TIME_WAIT not destroyed
        self._warned = 0.0

    def poll_once(self) -> int:
        """Act on every new drop; return how many TIME_WAIT sockets were destroyed."""
        done, now = 0, time.monotonic_ns()  # bpf_ktime_get_ns() is CLOCK_MONOTONIC too
        keys = set(self._pending.keys())  # walked first: a walk that deletes as it goes would start over
        for key in keys:
            raw = self._pending.lookup(key)
            if raw is None:
                continue
            dropped = TIME_WAIT_DROP.unpack(raw)[0]
            if now - dropped >= TIME_WAIT_RETRY_NS:
                self._forget(key)
            elif self._kept.get(key) != dropped:
                done += self._reap(key, dropped)
        self._kept = {k: v for k, v in self._kept.items() if k in keys}
        return done

    def _reap(self, key: bytes, dropped: int) -> bool:
        """Destroy the TIME_WAIT of one drop: forget the drop if it was, else keep it (its retransmission goes on)."""
        client_raw, vip_raw, client_port, vip_port = FLOW_KEY.unpack(key)
        vip, client = flow_ip(vip_raw), flow_ip(client_raw)
        if vip.version != client.version:  # one IPv6, one IPv4-mapped: an IPv6 socket, both in IPv6 form
            vip, client = (ipaddress.IPv6Address(a) if a.version == 6 else ipaddress.IPv6Address(f"::ffff:{a}")
                           for a in (vip, client))
        try:
            destroyed = destroy_time_wait(vip.packed, vip_port, client.packed, client_port)
        except OSError as e:
            destroyed = False
            self.failed += 1
            if e.errno in PERMANENT:
                self._give_up(e)
            elif time.monotonic() - self._warned >= WARN_EVERY:
                self._warned = time.monotonic()
                log.warning("destroying a TIME_WAIT socket failed (%s); %d failures so far", e, self.failed)
        if not destroyed:
            self._kept[key] = dropped  # harmless if the TIME_WAIT is gone: the program reads it only if not
            return False
        self.reaped += 1
        self._forget(key)
        return True

    def _give_up(self, e: OSError) -> None:
        if self.gave_up:
            return
        self.gave_up = True
        log.error("the kernel will not destroy sockets for this agent (%s): SYNs that find TIME_WAIT now go on "
                  "to it, and their connections keep the kernel's key, so their joins find no token", e)
        try:
            self._unsupported()
        except Exception:  # the drops go on, each SYN's retransmission still let through
            log.exception("clearing DIP_FLAG_REAP_TIME_WAIT failed")

    def _forget(self, key: bytes) -> None:
        self._kept.pop(key, None)
        try:
            self._pending.delete(key)
        except OSError:
            pass  # the LRU dropped it first
