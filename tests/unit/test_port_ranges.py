import functools
import random

import pytest

from ovs_flows.port_ranges import port_matches, range_to_masks


@functools.lru_cache(maxsize=None)
def min_cover(start: int, end: int, bits: int) -> int:
    """Fewest prefixes covering exactly [start, end], by exhaustive recursion on the prefix tree."""
    def go(lo: int, size: int) -> int:
        hi = lo + size - 1
        if hi < start or lo > end:
            return 0
        if start <= lo and hi <= end:
            return 1
        return go(lo, size // 2) + go(lo + size // 2, size // 2)
    return go(0, 1 << bits)


def covered(masks, bits):
    return {p for p in range(1 << bits) if any(port_matches(p, v, m) for v, m in masks)}


def test_exact_and_minimal_on_every_small_range():
    bits = 6
    for start in range(1 << bits):
        for end in range(start, 1 << bits):
            masks = range_to_masks(start, end, bits=bits)
            assert covered(masks, bits) == set(range(start, end + 1)), (start, end)
            assert len(masks) == min_cover(start, end, bits), (start, end)


def test_random_16_bit_ranges_are_exact_and_minimal():
    rng = random.Random(7)
    for _ in range(200):
        a, b = sorted(rng.randrange(65536) for _ in range(2))
        masks = range_to_masks(a, b)
        assert len(masks) == min_cover(a, b, 16)
        for v, m in masks:
            assert a <= v and (v | (~m & 0xFFFF)) <= b


def test_aligned_block_is_one_match():
    assert range_to_masks(4096, 8191) == [(4096, 0xF000)]
    assert range_to_masks(0, 65535) == [(0, 0)]
    assert range_to_masks(80, 80) == [(80, 0xFFFF)]


def test_bad_range():
    with pytest.raises(ValueError):
        range_to_masks(10, 5)
    with pytest.raises(ValueError):
        range_to_masks(0, 70000)
