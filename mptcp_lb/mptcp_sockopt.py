"""MPTCP socket options on Linux: the one place that knows their numbers and layouts.

Layouts follow include/uapi/linux/mptcp.h. ``MPTCP_SUBFLOW_ADDRS`` reads its
request header from the caller's buffer, which Python's ``socket.getsockopt``
cannot supply (it passes a buffer of its own), so that option goes through libc.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct

IPPROTO_MPTCP = 262
SOL_MPTCP = 284
MPTCP_INFO = 1
MPTCP_TCPINFO = 2
MPTCP_SUBFLOW_ADDRS = 3
TCP_ESTABLISHED = 1
_TCP_INFO_SIZE = 232  # bytes of struct tcp_info asked for (6.18 has 248); the kernel copies min(ours, its own)
_TCPI_SEGS_IN = struct.Struct("=140xI")  # struct tcp_info: tcpi_segs_in after tcpi_segs_out, since Linux 4.2

# struct mptcp_subflow_data {u32 size_subflow_data, num_subflows, size_kernel, size_user}
_SUBFLOW_DATA = struct.Struct("=4I")
_SOCKADDR_STORAGE = 128
_SUBFLOW_ADDRS_ENTRY = 2 * _SOCKADDR_STORAGE  # struct mptcp_subflow_addrs: local, remote
_SUBFLOW_ADDRS_INITIAL = 16  # entries to make room for before asking again

_libc = ctypes.CDLL(None, use_errno=True)


class MptcpUnavailable(RuntimeError):
    """The running kernel or namespace cannot do MPTCP; the message says what is missing."""


def mptcp_socket(family: int = socket.AF_INET) -> socket.socket:
    """Create an MPTCP stream socket, IPv4 unless ``family`` says AF_INET6."""
    try:
        return socket.socket(family, socket.SOCK_STREAM, IPPROTO_MPTCP)
    except OSError as e:
        if e.errno in (errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.EINVAL):
            raise MptcpUnavailable(
                f"cannot create an MPTCP socket ({os.strerror(e.errno)}): the kernel lacks "
                "CONFIG_MPTCP or net.mptcp.enabled is 0 in this network namespace") from e
        raise


def _format_sockaddr(raw: bytes) -> str:
    """Render a sockaddr_in / sockaddr_in6 as ``ip:port`` / ``[ip]:port``."""
    (family,) = struct.unpack_from("=H", raw)
    if family == socket.AF_INET:
        port, addr = struct.unpack_from("!H4s", raw, 2)
        return f"{ipaddress.IPv4Address(addr)}:{port}"
    if family == socket.AF_INET6:
        port, _flowinfo, packed = struct.unpack_from("!HI16s", raw, 2)
        addr = ipaddress.IPv6Address(packed)
        if addr.ipv4_mapped:  # an IPv4 subflow of an AF_INET6 socket
            return f"{addr.ipv4_mapped}:{port}"
        return f"[{addr}]:{port}"
    raise ValueError(f"unexpected address family {family} in MPTCP_SUBFLOW_ADDRS")


def parse_subflow_addrs(buf: bytes, copied_len: int) -> tuple[int, list[tuple[str, str]]]:
    """Decode an MPTCP_SUBFLOW_ADDRS answer into (total subflows, copied (local, remote) pairs)."""
    _size, num_subflows, _size_kernel, size_user = _SUBFLOW_DATA.unpack_from(buf)
    pairs = []
    for off in range(_SUBFLOW_DATA.size, copied_len - size_user + 1, size_user):
        local = buf[off:off + _SOCKADDR_STORAGE]
        remote = buf[off + _SOCKADDR_STORAGE:off + _SUBFLOW_ADDRS_ENTRY]
        pairs.append((_format_sockaddr(local), _format_sockaddr(remote)))
    return num_subflows, pairs


def _format_inet(addr: tuple) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _subflow_entries(sock: socket.socket, optname: int, entry_size: int) -> tuple[bytes, int]:
    """One ``struct mptcp_subflow_data``-framed answer (buffer, copied length), all subflows in it."""
    entries = _SUBFLOW_ADDRS_INITIAL
    while True:
        size = _SUBFLOW_DATA.size + entries * entry_size
        buf = ctypes.create_string_buffer(size)
        _SUBFLOW_DATA.pack_into(buf, 0, _SUBFLOW_DATA.size, 0, 0, entry_size)
        optlen = ctypes.c_uint32(size)
        if _libc.getsockopt(sock.fileno(), SOL_MPTCP, optname, buf, ctypes.byref(optlen)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"getsockopt(SOL_MPTCP, {optname}): {os.strerror(err)}")
        _size, total, _size_kernel, _size_user = _SUBFLOW_DATA.unpack_from(buf.raw)
        if total <= entries:
            return buf.raw, optlen.value
        entries = total  # subflows were added since we sized the buffer


def subflow_addrs(sock: socket.socket) -> list[tuple[str, str]]:
    """(local, remote) ``ip:port`` of every subflow of an MPTCP connection.

    A connection that fell back to plain TCP (the kernel answers EOPNOTSUPP)
    has one subflow: the socket's own addresses.
    """
    try:
        raw, copied = _subflow_entries(sock, MPTCP_SUBFLOW_ADDRS, _SUBFLOW_ADDRS_ENTRY)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return [(_format_inet(sock.getsockname()), _format_inet(sock.getpeername()))]
        raise
    return parse_subflow_addrs(raw, copied)[1]


def connection_token(sock: socket.socket) -> int | None:
    """The connection's local MPTCP token (``mptcpi_token``), None after fallback to TCP.

    With token-based steering this is what proves a DIP adopted a key from its
    own slice: the token is SHA-256(local key)[0:4].
    """
    try:
        raw = sock.getsockopt(SOL_MPTCP, MPTCP_INFO, 96)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return None
        raise
    return struct.unpack_from("=I", raw, 12)[0]  # struct mptcp_info: mptcpi_token after 4 u8 + 2 u32


def accepted_subflow_count(sock: socket.socket) -> int:
    """Subflows the peer has accepted, the initial one included: established, and heard from since.

    MPTCP_INFO's ``mptcpi_subflows`` counts joins as soon as the path manager
    starts them. A join is established at the client once the SYN-ACK is in,
    but the server takes it only when the third ACK arrives, and that ACK
    travels its own path: a payload and DATA_FIN sent meanwhile can overtake
    it, and a server kernel refuses joins once the DATA_FIN is in
    (MPTcpExtMPJoinRejected). The server answers an accepted third ACK with an
    ACK (the client retransmits the third ACK until it does), so a subflow
    with a second segment in (``tcpi_segs_in`` >= 2: the SYN-ACK, then that
    ACK, or an ACK of data on the initial subflow) is one the server has.
    A second SYN-ACK also counts, which takes a join path holding a packet
    a second or more (the SYN-ACK retransmission timer).
    """
    try:
        raw, copied = _subflow_entries(sock, MPTCP_TCPINFO, _TCP_INFO_SIZE)
    except OSError as e:
        if e.errno == errno.EOPNOTSUPP:
            return 1
        raise
    _size, _total, _size_kernel, size_user = _SUBFLOW_DATA.unpack_from(raw)
    return sum(1 for off in range(_SUBFLOW_DATA.size, copied - size_user + 1, size_user)
               if raw[off] == TCP_ESTABLISHED and _TCPI_SEGS_IN.unpack_from(raw, off)[0] >= 2)


__all__ = ["IPPROTO_MPTCP", "SOL_MPTCP", "MPTCP_SUBFLOW_ADDRS", "MPTCP_TCPINFO", "MptcpUnavailable",
           "mptcp_socket", "subflow_addrs", "connection_token", "MPTCP_INFO", "parse_subflow_addrs",
           "accepted_subflow_count"]
