"""Port ranges as the fewest masked ``tp_dst`` matches OpenFlow can express."""

from __future__ import annotations


def range_to_masks(start: int, end: int, bits: int = 16) -> list[tuple[int, int]]:
    """Cover [start, end] exactly with the fewest (value, mask) prefix matches.

    Greedy: at each step take the largest power-of-two block that is aligned
    at ``start`` and does not pass ``end``. For prefix (contiguous-mask)
    matching this is optimal, and it is what TCAMs and OVS classify fastest.
    """
    full = (1 << bits) - 1
    if not 0 <= start <= end <= full:
        raise ValueError(f"bad range {start}-{end} for {bits} bits")
    out: list[tuple[int, int]] = []
    while start <= end:
        size = start & -start if start else 1 << bits
        while start + size - 1 > end:
            size >>= 1
        out.append((start, full & ~(size - 1)))
        start += size
    return out


def port_matches(port: int, value: int, mask: int) -> bool:
    return port & mask == value & mask
