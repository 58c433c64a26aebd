"""The DIP's key pool: dip_pool kept full of fresh keys in the DIP's slices, for bpf/dip_tc.c's pool mode.

Keys are secrets (whoever knows one can forge MP_JOINs for its connection):
nothing here logs or prints one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from mptcp_lb.bpf import BpfMap
from mptcp_lb.mptcp_codec import make_key

from .dip_abi import INVALID_SEQ, POOL_ENTRY, POOL_SIZE, POOL_STATE, U32
from .poller import IDLE_INTERVAL, Poller

log = logging.getLogger(__name__)

__all__ = ["KeyPool"]


class KeyPool(Poller):
    """Keeps ``dip_pool`` full of fresh keys in the DIP's slices.

    The program takes pool index ``i`` with an atomic add on
    ``dip_pool_state.next`` and uses slot ``i % size`` only if that slot's
    seq is ``i + 1`` (a never-filled slot has seq 0); otherwise it finds the pool empty and leaves the SYN/ACK's
    key alone. Each key is written for exactly one index, so no key is ever
    handed out twice. A consumed slot is refilled (for index ``i + size``)
    one poll after its index was seen taken, so no program can still be
    reading it; the write goes in two steps (new key with an invalid seq,
    then the valid seq) so a reader never pairs a valid seq with a torn key.
    It polls every ``interval`` while keys are being taken, and backs off to
    ``idle_interval`` while none are (``dip_agent.poller``).
    """

    name = "dip-key-pool"

    def __init__(self, pool_map: BpfMap, state_map: BpfMap, slices: Iterable[int], slice_bits: int,
                 *, size: int = POOL_SIZE, interval: float = 0.02, idle_interval: float = IDLE_INTERVAL):
        super().__init__(interval, idle_interval)
        self.slices = frozenset(slices)
        self.slice_bits = slice_bits
        make_key(self.slices, slice_bits)  # validates slices and slice_bits now, not in the thread
        if size <= 0 or size & (size - 1):
            raise ValueError(f"pool size {size} is not a power of two")
        self.size = size
        self._pool = pool_map
        self._state = state_map
        self._done = 0  # indices below this are refilled (or were never filled)
        self._seen = 0  # `next` as read at the previous poll
        self._taken = 0  # keys taken between the last two polls
        self._lock = threading.Lock()
        self.refilled = 0

    def next_index(self) -> int:
        """How many pool indices the program has taken so far."""
        return POOL_STATE.unpack(self._state.lookup(U32.pack(0)))[0]

    def _write(self, index: int) -> None:
        slot = U32.pack(index % self.size)
        key = make_key(self.slices, self.slice_bits)
        self._pool.update(slot, POOL_ENTRY.pack(key, INVALID_SEQ))
        self._pool.update(slot, POOL_ENTRY.pack(key, index + 1))  # seq 0: a slot never filled

    def fill(self) -> None:
        """Fill every slot with a fresh key for the next ``size`` indices."""
        with self._lock:
            start = self.next_index()
            for index in range(start, start + self.size):
                self._write(index)
            self._done = self._seen = start
        log.info("key pool: %d keys in slices %s of %d bits", self.size, sorted(self.slices),
                 self.slice_bits)

    def poll_once(self) -> int:
        """Refill the slots taken before the previous poll; return how many were refilled."""
        with self._lock:
            current = self.next_index()
            safe, self._seen = self._seen, current
            self._taken = current - safe
            if safe <= self._done:
                return 0
            first = max(self._done, safe - self.size)  # older ones were overtaken and rewritten below
            for taken in range(first, safe):
                index = taken + self.size
                if index < current:  # the program already ran past it and found the pool empty
                    index += (current - index + self.size - 1) // self.size * self.size
                self._write(index)
            self._done = safe
            self.refilled += safe - first
            if current - safe >= self.size // 2:
                log.warning("key pool: %d keys taken in one poll interval; pool size %d", current - safe, self.size)
            return safe - first

    def busy(self, done: int) -> bool:
        """Keys were refilled, or taken since the previous poll (they are refilled at the next)."""
        return done > 0 or self._taken > 0
