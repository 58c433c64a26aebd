"""A VIP's slot table: a fixed hash space, and which DIP owns each slot. Pure.

A MUX hashes a packet without steering information (a first subflow in port
mode, a client without timestamps in the token modes) into one of the VIP's
``slots`` (256 by default, ``config.DEFAULT_SLOTS``), and the controller decides which DIP owns each slot. The hash never
changes, so a membership change moves only the slots whose owner changes:

- OVS 3.1 gives a select group with no ``selection_method`` a ``dp_hash``
  map while it needs at most 256 hash values, and with N equal buckets hash
  value h goes to bucket h mod N; a full ``OFPGC_MODIFY`` with the same count,
  weights and order keeps that map. 256 equal buckets are 256 stable slots.
- ``multipath`` over a fixed link count (seed mode's predictable hash) is
  stable the same way.

Ownership is weighted rendezvous hashing: each slot goes to the DIP with the
highest ``weight / -ln(u)``, where ``u`` is a hash of (slot, DIP id) in (0, 1).
It is a pure function of the set of DIPs that take new connections, so every
controller and every restart computes the same table with no history;
removing a DIP moves only its own slots, and adding one takes about
1/(N+1) of them.

Moving a slot would cut the connections that hash there off from the DIP
that holds them. So the slot enters a *transition*: for ``duration`` seconds
its packets go to the new owner marked with the previous one, and the new
owner passes on any non-SYN packet it holds no connection for
(bpf/dip_tc.c, "second chance").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mptcp_lb.config import DEFAULT_SLOTS, Dip, Vip

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit reaches every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def slot_owners(weights: Mapping[int, int], slots: int = DEFAULT_SLOTS) -> tuple[int, ...]:
    """Slot -> DIP id for the DIPs in ``weights`` (DIP id -> weight >= 1); () when there are none."""
    if not weights:
        return ()
    ids = np.fromiter(sorted(weights), dtype=np.uint64)
    if any(not isinstance(w, int) or w < 1 for w in weights.values()):
        raise ValueError(f"weights must be integers >= 1, got {dict(weights)!r}")
    w = np.array([weights[int(i)] for i in ids], dtype=np.float64)
    with np.errstate(over="ignore"):
        keys = _mix64((ids * _GOLDEN)[None, :] ^ _mix64(np.arange(slots, dtype=np.uint64) + _GOLDEN)[:, None])
    if (w == w[0]).all():
        best = np.argmax(keys, axis=1)  # equal weights: the largest hash has the largest score
    else:
        # The top 53 bits as a float in (0, 1): never 0, so the logarithm is finite.
        u = ((keys >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)
        best = np.argmax(w[None, :] / -np.log(u), axis=1)
    return tuple(int(ids[j]) for j in best)


@dataclass(frozen=True)
class Transition:
    """A slot's packets go to its new owner marked with ``previous`` until ``until`` (wall-clock seconds)."""

    previous: int
    until: float


def next_transitions(old: Sequence[int], new: Sequence[int], transitions: Mapping[int, Transition],
                     now: float, duration: float) -> dict[int, Transition]:
    """The transitions after a VIP's table goes from ``old`` to ``new`` at ``now``.

    A slot that changes owner starts a transition from its owner until now.
    Only one previous owner is kept: a slot that moves again before its
    transition ends forgets the owner before last, whose connections in that
    slot then lose the subflows that hash there. Transitions that ended, or
    whose slot went back to its previous owner, are dropped.
    """
    out = {s: t for s, t in transitions.items() if t.until > now and s < len(new)}
    if duration > 0 and len(old) == len(new):
        for s, (was, owner) in enumerate(zip(old, new)):
            if was != owner:
                out[s] = Transition(previous=was, until=now + duration)
    return {s: t for s, t in out.items() if new[s] != t.previous}


@dataclass(frozen=True)
class SlotTable:
    """What a VIP's hashed traffic does: slot -> owner DIP id, and the slots in transition."""

    owners: tuple[int, ...]
    transitions: Mapping[int, Transition] = field(default_factory=dict)


def serving_dips(vip: Vip, down: frozenset[int] | set[int] = frozenset()) -> list[Dip]:
    """The DIPs that take new connections: active and not down.

    If every active DIP is down, all of them: a VIP that fails open keeps
    serving whatever still works, where an empty one would refuse everyone.
    """
    active = [d for d in vip.dips if d.state == "active"]
    up = [d for d in active if d.id not in down]
    return up or active


def table_for(vip: Vip, down: frozenset[int] | set[int] = frozenset(),
              transitions: Mapping[int, Transition] | None = None) -> SlotTable:
    """The VIP's slot table for the DIPs that take new connections, with the given transitions."""
    owners = slot_owners({d.id: d.weight for d in serving_dips(vip, down)}, vip.slots)
    known = {d.id for d in vip.dips}
    return SlotTable(owners, live_transitions(transitions or {}, float("-inf"), known))


def live_transitions(transitions: Mapping[int, Transition], now: float,
                     known: set[int] | frozenset[int] | None = None) -> dict[int, Transition]:
    """The transitions still running at ``now`` whose previous owner is in ``known`` (None: any)."""
    return {s: t for s, t in transitions.items() if t.until > now and (known is None or t.previous in known)}


def balance(owners: Sequence[int]) -> float:
    """Most slots any DIP owns over the mean (1.0 is perfect)."""
    counts: dict[int, int] = {}
    for o in owners:
        counts[o] = counts.get(o, 0) + 1
    return max(counts.values()) / (len(owners) / len(counts)) if counts else 0.0


def moved(old: Sequence[int], new: Sequence[int]) -> list[int]:
    """Slots whose owner differs between two tables of the same size."""
    return [s for s, (a, b) in enumerate(zip(old, new)) if a != b]


__all__ = ["SlotTable", "Transition", "slot_owners", "serving_dips", "table_for", "next_transitions",
           "live_transitions", "balance", "moved"]
