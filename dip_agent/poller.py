"""A background thread that polls a BPF map fast while the map is busy and backs off while it is idle.

The key pool and the TIME_WAIT reaper each watch a map that the DIP's tc
programs write. Polled at a fixed 20 ms, three agents' six threads woke 300
times a second on the core that also runs the DIPs' and clients' stacks,
and cost a token-mode download about 5% of its goodput (measured with
``make bench``'s downloads, hosts on one core, the PMD on the other). Idle,
a poller doubles its wait up to ``idle_interval``; the first poll that finds
work puts it back to ``interval``.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

__all__ = ["Poller", "IDLE_INTERVAL"]

WARN_EVERY = 10.0  # seconds between log lines for a poll that keeps failing

# The longest idle wait. The reaper must act before a dropped SYN's retransmission (1 s later). The key pool
# refills a taken key one poll after it sees it taken: after an idle spell, up to 0.22 s for the 1024 keys
# (about 4,600 new connections/s per DIP) before the pool runs dry.
IDLE_INTERVAL = 0.2


class Poller:
    """Runs ``poll_once`` in a thread: every ``interval`` s while it reports work, backing off to ``idle_interval``.

    A poll that fails is logged (at most every ``WARN_EVERY`` seconds) and
    backed off from like an idle one.

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
        wait, failures, warned = self.interval, 0, float("-inf")
        while not self._stop.wait(wait):
            try:
                busy = self.busy(self.poll_once())
            except Exception:  # a transient map error must not end polling for good
                failures += 1
                if time.monotonic() - warned >= WARN_EVERY:  # one that keeps failing must not flood the log
                    warned = time.monotonic()
                    log.exception("%s: poll failed (%d failures so far)", self.name, failures)
                busy = False  # and back off, as when idle
            wait = self.next_wait(wait, busy)

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
