"""One switch's TLS connection, safe for os-ken's two threads per switch.

os-ken's native hub reads a switch's connection in one thread and writes it
in another. OpenSSL forbids two threads in one SSL object at once, and when
SSL_read and SSL_write race on a fresh connection the TLS state breaks: the
reader sees a spurious end of stream or garbled bytes, and os-ken drops the
switch (a MUX reconnects; a connection that should have been refused by
admit() is closed before it is counted). Here every OpenSSL call runs under
one lock, non-blocking, and waiting for the socket happens outside it, so a
reader parked on an idle switch never holds up a write. A wait lasts at
most ``POLL_SLICE`` before OpenSSL is asked again: with TLS 1.2
renegotiation one side's call can read what the other waits for.
"""

from __future__ import annotations

import errno
import functools
import select
import socket
import ssl
import threading
import time


POLL_SLICE = 0.2  # seconds: a wait re-tries OpenSSL this often, so a wake-up the other thread took costs no more


class SerializedTLSSocket:
    """An ``ssl.SSLSocket`` whose reads and writes never overlap; what os-ken and admit() use of it, no more."""

    def __init__(self, sock: ssl.SSLSocket):
        self._sock = sock
        self._lock = threading.Lock()
        self._timeout = sock.gettimeout()
        self._shut = False  # ssl's shutdown() drops the TLS layer: what follows would be ciphertext
        self._peer_cert = sock.getpeercert(binary_form=True)  # the handshake is done; kept past shutdown
        sock.setblocking(False)

    def settimeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def gettimeout(self) -> float | None:
        return self._timeout

    def getpeercert(self, binary_form: bool = False):
        """The switch's certificate (DER only: ``binary_form=False`` would need OpenSSL again)."""
        if not binary_form:
            raise ValueError("SerializedTLSSocket keeps the peer certificate in DER form only")
        return self._peer_cert

    def setsockopt(self, *args) -> None:
        self._sock.setsockopt(*args)

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv(self, bufsize: int) -> bytes:
        return self._io(lambda: self._sock.recv(bufsize), b"")

    def sendall(self, data) -> None:
        view = memoryview(data).cast("B")
        while view:
            # A send that wants the socket is retried with the same bytes, which OpenSSL requires
            # (Python sets SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, so the view may move).
            view = view[self._io(lambda: self._sock.send(view), None):]

    def shutdown(self, how: int) -> None:
        """Ends both directions, whatever ``how``: without its TLS layer the socket could only read ciphertext.

        os-ken shuts the write side to wait for the switch to hang up; here its
        reader sees the end at once instead, and os-ken closes.
        """
        with self._lock:
            self._shut = True
            self._sock.shutdown(how)

    def close(self) -> None:
        with self._lock:
            self._shut = True
            try:  # wakes a thread polling the fd, which close() alone would leave waiting
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()

    def _io(self, call, after_shutdown):
        """``call`` under the lock; while OpenSSL wants the socket, wait for it unlocked, up to the timeout.

        Once shut down, a read is an end of stream (``after_shutdown``) and a
        write a broken pipe, even for a thread that was already waiting.
        """
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        while True:
            with self._lock:
                if self._shut:
                    if after_shutdown is None:
                        raise BrokenPipeError(errno.EPIPE, "the TLS connection was shut down")
                    return after_shutdown
                try:
                    return call()
                except ssl.SSLWantReadError:
                    events = select.POLLIN
                except ssl.SSLWantWriteError:
                    events = select.POLLOUT
                fd = self._sock.fileno()
            remaining = POLL_SLICE if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            poller = select.poll()
            poller.register(fd, events)
            poller.poll(min(remaining, POLL_SLICE) * 1000)


def serialized(connection_factory):
    """os-ken's ``datapath_connection_factory``, handed a ``SerializedTLSSocket`` for a TLS switch.

    For the native hub only: eventlet's green threads never overlap in OpenSSL, and it patches poll away.
    """
    if getattr(connection_factory, "serializes_tls", False):
        return connection_factory

    @functools.wraps(connection_factory)
    def factory(sock, address):
        return connection_factory(SerializedTLSSocket(sock) if isinstance(sock, ssl.SSLSocket) else sock, address)
    factory.serializes_tls = True
    return factory
