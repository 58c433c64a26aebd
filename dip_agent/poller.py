"""A background thread that polls a BPF map fast while the map is busy and backs off while it is idle.

The key pool and the TIME_WAIT reaper each watch a map that the DIP's tc
programs write. Polled at a fixed 20 ms, three agents' six threads woke 300
times a second on the core that also runs the DIPs' and clients' stacks,
and cost a token-mode download about 5% of its goodput (measured with
``make bench``'s downloads, hosts on one core, the PMD on the other). Idle,
a poller doubles its interval up to ``slow``; the first poll that finds work
puts it back to ``fast``.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)

__all__ = ["Poller", "IDLE_INTERVAL"]

# The longest idle wait. The reaper must act before a dropped SYN's retransmission (1 s later);
# the key pool, before a burst after idle takes its keys (1024 keys in 0.2 s: 5,000 connections/s per DIP).
IDLE_INTERVAL = 0.2


class Poller:
    """Runs ``poll_once`` in a thread: every ``interval`` s while it reports work, backing off to ``idle_interval``.

    Subclasses define ``poll_once() -> int`` (how much it did) and may
    override ``busy()`` (whether the last poll saw activity; default: it did
    something).
    """

    name = "poller"

    def __init__(self, interval: float, idle_interval: float = IDLE_INTERVAL):
        if not 0 < interval <= idle_interval:
            raise ValueError(f"poll interval {interval!r} is not in (0, idle interval {idle_interval!r}]")
        self.interval = interval
        self.idle_interval = idle_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self) -> int:
        raise NotImplementedError

    def busy(self, done: int) -> bool:
        return done > 0

    def next_wait(self, wait: float, busy: bool) -> float:
        """The wait before the next poll: ``interval`` after work, else twice the last, up to ``idle_interval``."""
        return self.interval if busy else min(wait * 2, self.idle_interval)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        wait = self.interval
        while not self._stop.wait(wait):
            try:
                busy = self.busy(self.poll_once())
            except Exception:  # a transient map error must not end polling for good
                log.exception("%s: poll failed", self.name)
                busy = True
            wait = self.next_wait(wait, busy)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
