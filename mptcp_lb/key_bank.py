"""Seed-mode keys made ahead of time, binned by the slice their token falls in.

A key for a DIP that owns one slice of 4096 costs 4096 hashes on average when
drawn on demand (rejection sampling). Drawn for every slice at once, each
random key's token lands in some slice, so filing it there costs one hash,
whatever the slice layout. ``KeyBank`` keeps up to ``per_slice`` keys for
every slice a seed-mode DIP owns and refills them from a background thread,
so the controller's event thread only ever pops a key.

Keys come from ``secrets`` and are handed out once: a popped key is gone
from the bank. Nothing here logs or prints one.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections import deque
from collections.abc import Iterable

from mptcp_lb.mptcp_codec import KEY_LEN, MAX_SLICE_BITS

log = logging.getLogger(__name__)

BATCH = 4096  # keys drawn per refill round


class KeyBank:
    """Keys by slice for ``slice_bits``-bit slices; ``want`` says which slices to keep stocked."""

    def __init__(self, slice_bits: int, slices: Iterable[int] = (), per_slice: int = 64, rng=secrets):
        if not isinstance(slice_bits, int) or not 1 <= slice_bits <= MAX_SLICE_BITS:
            raise ValueError(f"slice_bits must be 1..{MAX_SLICE_BITS}, got {slice_bits!r}")
        self.slice_bits = slice_bits
        self.per_slice = per_slice
        self._rng = rng
        self._bins: dict[int, deque[bytes]] = {}
        self._lock = threading.Lock()
        self._hungry = threading.Event()  # some wanted bin is below half full
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.drawn = 0  # keys made (each one hash)
        self.handed_out = 0
        self.empty = 0  # take() found nothing in any of the slices asked for
        self.want(slices)

    def want(self, slices: Iterable[int]) -> None:
        """Keep these slices stocked (and only these: keys for others are dropped)."""
        wanted = set(slices)
        bad = sorted(s for s in wanted if not 0 <= s < 1 << self.slice_bits)
        if bad:
            raise ValueError(f"slices {bad[:8]} are outside 0..{(1 << self.slice_bits) - 1}")
        with self._lock:
            self._bins = {s: self._bins.get(s, deque()) for s in wanted}
        self._hungry.set()

    def fill(self, rounds: int = 1) -> int:
        """Draw ``rounds`` batches of keys and file each under its token's slice; return how many were kept."""
        kept = 0
        shift = 32 - self.slice_bits
        for _ in range(rounds):
            raw = self._rng.token_bytes(KEY_LEN * BATCH)
            with self._lock:
                bins, cap = self._bins, self.per_slice
                for i in range(0, len(raw), KEY_LEN):
                    key = raw[i:i + KEY_LEN]
                    b = bins.get(int.from_bytes(hashlib.sha256(key).digest()[:4], "big") >> shift)
                    if b is not None and len(b) < cap:
                        b.append(key)
                        kept += 1
                self.drawn += BATCH
        return kept

    def take(self, slices: Iterable[int]) -> bytes | None:
        """A fresh key whose token is in one of ``slices``, or None if the bank has none for them yet."""
        with self._lock:
            stocked = [b for b in (self._bins.get(s) for s in slices) if b]
            if not stocked:
                self.empty += 1
                self._hungry.set()
                return None
            b = stocked[secrets.randbelow(len(stocked))] if len(stocked) > 1 else stocked[0]
            key = b.popleft()
            self.handed_out += 1
            if len(b) < self.per_slice // 2:
                self._hungry.set()
            return key

    def stocked(self) -> int:
        with self._lock:
            return sum(len(b) for b in self._bins.values())

    def _full(self) -> bool:
        with self._lock:
            return all(len(b) >= self.per_slice for b in self._bins.values())

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mptcp-lb-key-bank", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._hungry.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._hungry.wait()
            self._hungry.clear()
            while not self._stop.is_set() and not self._full():
                try:
                    self.fill()
                except Exception:  # a bad draw must not end refilling for good
                    log.exception("key bank refill failed")
                    break


__all__ = ["KeyBank", "BATCH"]
