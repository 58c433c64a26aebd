"""mininet_topos.report.summarize: what the demo promises, with the hash's luck accounted for."""

from __future__ import annotations

import random

import pytest

from mininet_topos.report import SPREAD_JUDGED_BELOW, chance_a_dip_is_left_out, summarize


def connection(dip: int, subflows: int = 2) -> dict:
    return {"subflows": [{"client": f"10.0.0.1:{1000 + i}", "vip": "10.0.0.100:80", "dip": dip}
                         for i in range(subflows)], "bytes_sent": 100, "verified": True}


def test_the_bound_is_the_sum_of_each_dips_chance_to_get_none():
    assert chance_a_dip_is_left_out(10, {1: 1 / 3, 2: 1 / 3, 3: 1 / 3}) == pytest.approx(3 * (2 / 3) ** 10)
    assert chance_a_dip_is_left_out(5, {1: 0.0, 2: 1.0}) == 1.0  # a DIP without slots is always left out
    assert chance_a_dip_is_left_out(1, {1: 0.5, 2: 0.5}) == 1.0  # capped: it is a probability


def test_the_bound_holds_for_a_simulated_hash():
    shares = {1: 0.3, 2: 0.3, 3: 0.4}
    rng = random.Random(7)
    runs, conns = 20000, 10
    missed = sum(len({rng.choices(list(shares), weights=list(shares.values()))[0] for _ in range(conns)}) < 3
                 for _ in range(runs))
    assert missed / runs <= chance_a_dip_is_left_out(conns, shares)
    assert missed > 0  # ten connections do miss a DIP now and then: this is why few are not judged


def test_a_dip_left_out_by_few_connections_is_reported_not_judged():
    summary = summarize([connection(1), connection(3)] * 5, [1, 2, 3])
    assert not summary["all_dips_used"] and summary["spread_ok"]
    assert summary["chance_a_dip_left_out"] > SPREAD_JUDGED_BELOW


def test_a_dip_left_out_by_many_connections_fails_the_spread():
    summary = summarize([connection(1), connection(3)] * 30, [1, 2, 3], {1: 0.34, 2: 0.33, 3: 0.33})
    assert summary["chance_a_dip_left_out"] < SPREAD_JUDGED_BELOW
    assert not summary["all_dips_used"] and not summary["spread_ok"]


def test_connections_on_every_dip_pass_and_a_split_one_is_caught():
    summary = summarize([connection(1), connection(2), connection(3)], [1, 2, 3])
    assert summary["all_dips_used"] and summary["spread_ok"] and summary["all_one_dip"]
    split = {"subflows": connection(1)["subflows"] + connection(2)["subflows"], "bytes_sent": 1, "verified": True}
    assert not summarize([split], [1, 2])["all_one_dip"]
    assert summary["per_dip"]["2"] == {"connections": 1, "subflows": 2, "bytes": 100}
