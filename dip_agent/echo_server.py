"""The DIP's test service: hash what a client sent and say which subflows carried it.

Asking the DIP (not the MUX) which subflows it terminated is how tests prove
that every subflow of a connection reached the same DIP.
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading

from mptcp_lb import echo_protocol
from mptcp_lb.mptcp_sockopt import connection_token, mptcp_socket, subflow_addrs

log = logging.getLogger(__name__)

__all__ = ["EchoServer"]


class EchoServer:
    """MPTCP echo-hash server on ``host:port`` (and ``[::]:port`` with ``ipv6``), one thread per connection.

    The IPv6 listener takes IPv6 only, so IPv4 peers keep their plain addresses.
    """

    def __init__(self, dip_id: int, port: int, *, host: str = "0.0.0.0", ipv6: bool = False,
                 max_payload: int = echo_protocol.DEFAULT_MAX_PAYLOAD, io_timeout: float = 60.0):
        self.dip_id = dip_id
        self.host = host
        self.ipv6 = ipv6
        self.port = port
        self.max_payload = max_payload
        self.io_timeout = io_timeout  # a stalled client must not pin a thread forever
        self._listeners: list[socket.socket] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conns: dict[socket.socket, threading.Thread] = {}

    def start(self) -> None:
        """Listen, then serve from a background thread; returns once listening."""
        if self._listeners:
            raise RuntimeError("EchoServer already started")
        for family, host in ((socket.AF_INET, self.host), *([(socket.AF_INET6, "::")] if self.ipv6 else [])):
            listener = mptcp_socket(family)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind((host, self.port))
                listener.listen(128)
            except OSError:
                listener.close()
                for other in self._listeners:
                    other.close()
                self._listeners = []
                raise
            self._listeners.append(listener)
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"echo-accept-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        log.info("echo server for DIP %d listening on %s:%d%s (MPTCP)", self.dip_id, self.host, self.port,
                 f" and [::]:{self.port}" if self.ipv6 else "")

    def stop(self) -> None:
        """Stop accepting, cut open connections, and wait for their threads."""
        if not self._listeners:
            return
        self._wake_w.send(b"x")
        self._accept_thread.join()
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        with self._lock:
            conns = dict(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its handler
        for thread in conns.values():
            thread.join()
        self._wake_r.close()
        self._wake_w.close()
        log.info("echo server for DIP %d on port %d stopped", self.dip_id, self.port)

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            for listener in self._listeners:
                sel.register(listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in sel.select()}
                if self._wake_r in ready:
                    return
                for listener in ready:
                    try:
                        conn, peer = listener.accept()
                    except OSError as e:
                        log.warning("accept failed: %s", e)
                        continue
                    thread = threading.Thread(target=self._serve, args=(conn, peer),
                                              name=f"echo-{peer[0]}:{peer[1]}", daemon=True)
                    with self._lock:
                        self._conns[conn] = thread
                    thread.start()

    def _serve(self, conn: socket.socket, peer: tuple) -> None:
        try:
            conn.settimeout(self.io_timeout)
            nbytes, digest = echo_protocol.read_request(conn, self.max_payload)
            reply = echo_protocol.make_reply(self.dip_id, nbytes, digest, subflow_addrs(conn),
                                             connection_token(conn))
            conn.sendall(echo_protocol.encode_reply(reply))
            # Close only once the client's end of the stream is in: closing with anything of its
            # still unread makes the kernel reset the connection (TcpExtTCPAbortOnData).
            conn.shutdown(socket.SHUT_WR)
            echo_protocol.read_to_eof(conn)
            log.debug("served %s:%d: %d bytes over %d subflows", peer[0], peer[1], nbytes,
                      len(reply["subflows"]))
        except (echo_protocol.ProtocolError, OSError) as e:
            log.warning("dropping connection from %s:%d: %s", peer[0], peer[1], e)
        finally:
            with self._lock:
                del self._conns[conn]
            conn.close()
