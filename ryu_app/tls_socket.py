"""One switch's TLS connection, safe for os-ken's two threads per switch.

os-ken's native hub reads a switch's connection in one thread and writes it
in another. OpenSSL forbids two threads in one SSL object at once, and when
SSL_read and SSL_write race on a fresh connection the TLS state breaks: the
reader sees a spurious end of stream or garbled bytes, and os-ken drops the
switch (a MUX reconnects; a connection that should have been refused by
admit() is closed before it is counted). Here every OpenSSL call runs under
one lock, non-blocking, and waiting for the socket happens outside it, so a
reader parked on an idle switch never holds up a write.
"""

from __future__ import annotations

import errno
import functools
import select
import socket
import ssl
import threading
import time


class SerializedTLSSocket:
    """An ``ssl.SSLSocket`` whose reads and writes never overlap; the rest is the socket's own."""

    def __init__(self, sock: ssl.SSLSocket):
        self._sock = sock
        self._lock = threading.Lock()
        self._timeout = sock.gettimeout()
        self._shut = False  # ssl's shutdown() drops the TLS layer: what follows would be ciphertext
        sock.setblocking(False)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def recv(self, bufsize: int) -> bytes:
        return b"" if self._shut else self._io(lambda: self._sock.recv(bufsize))

    def sendall(self, data) -> None:
        if self._shut:
            raise BrokenPipeError(errno.EPIPE, "the TLS connection was shut down")
        view = memoryview(data).cast("B")
        while view:
            # A send that wants the socket is retried with the same bytes, which OpenSSL requires
            # (Python sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, so the view may move).
            view = view[self._io(lambda: self._sock.send(view)):]

    def shutdown(self, how: int) -> None:
        with self._lock:
            self._shut = True
            self._sock.shutdown(how)

    def close(self) -> None:
        with self._lock:
            self._sock.close()

    def __getattr__(self, name):
        return getattr(self._sock, name)  # getpeercert, setsockopt, fileno, ...

    def _io(self, call):
        """``call`` under the lock; while OpenSSL wants the socket, wait for it unlocked, up to the timeout."""
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                try:
                    return call()
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                fd = self._sock.fileno()
            if fd < 0:
                raise OSError(errno.EBADF, "the TLS connection was closed")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise socket.timeout("timed out")
            poller = select.poll()
            poller.register(fd, events)
            poller.poll(None if remaining is None else remaining * 1000)


def serialized(connection_factory):
    """os-ken's ``datapath_connection_factory``, handed a ``SerializedTLSSocket`` for a TLS switch."""
    if getattr(connection_factory, "serializes_tls", False):
        return connection_factory

    @functools.wraps(connection_factory)
    def factory(sock, address):
        return connection_factory(SerializedTLSSocket(sock) if isinstance(sock, ssl.SSLSocket) else sock, address)
    factory.serializes_tls = True
    return factory
