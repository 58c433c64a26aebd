"""Multipart replies collected until complete, with a bound on what a switch can make the controller hold.

A switch sends a large stats reply in parts (``OFPMPF_REPLY_MORE``). A
broken or hostile one could send parts forever, or start many replies and
finish none: each reply is held at most ``max_entries`` entries and
``ttl`` seconds, and a switch at most ``max_pending`` unfinished ones.
Pure: the caller passes the time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    started: float
    entries: list = field(default_factory=list)


class MultipartBuffer:
    def __init__(self, max_entries: int = 1_000_000, max_pending: int = 16, ttl: float = 30.0):
        self.max_entries = max_entries
        self.max_pending = max_pending
        self.ttl = ttl
        self._pending: dict[tuple[int, int], _Pending] = {}
        self.dropped = 0  # replies given up on: too long, too many at once, or too old

    def add(self, dpid: int, xid: int, entries, more: bool, now: float) -> list | None:
        """One part of reply ``xid`` from ``dpid``; the whole reply once its last part is in, else None."""
        self._expire(now)
        key = (dpid, xid)
        pending = self._pending.get(key)
        if pending is None:
            if sum(1 for d, _ in self._pending if d == dpid) >= self.max_pending:
                self._drop(key, f"more than {self.max_pending} unfinished replies")
                return None
            pending = self._pending[key] = _Pending(now)
        pending.entries.extend(entries)
        if len(pending.entries) > self.max_entries:
            del self._pending[key]
            self._drop(key, f"more than {self.max_entries} entries")
            return None
        if more:
            return None
        return self._pending.pop(key).entries

    def _expire(self, now: float) -> None:
        for key in [k for k, p in self._pending.items() if now - p.started > self.ttl]:
            del self._pending[key]
            self._drop(key, f"unfinished after {self.ttl:g} s")

    def _drop(self, key: tuple[int, int], why: str) -> None:
        self.dropped += 1
        log.warning("dpid=%#x: dropped multipart reply xid=%d: %s", key[0], key[1], why)

    def forget(self, dpid: int) -> None:
        """A switch went away: nothing of its replies is coming."""
        for key in [k for k in self._pending if k[0] == dpid]:
            del self._pending[key]


__all__ = ["MultipartBuffer"]
