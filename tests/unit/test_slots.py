"""The slot table: rendezvous ownership and transitions (mptcp_lb/slots.py)."""

import pytest

from mptcp_lb.config import DEFAULT_SLOTS as SLOTS
from mptcp_lb.slots import Transition, balance, live_transitions, moved, next_transitions, slot_owners


def equal(ids):
    return {i: 1 for i in ids}


def test_every_slot_has_an_owner_among_the_dips_and_all_dips_get_some():
    owners = slot_owners(equal(range(1, 9)))
    assert len(owners) == SLOTS
    assert set(owners) == set(range(1, 9))
    assert balance(owners) < 1.6


def test_a_pure_function_of_the_set_not_of_its_order_or_history():
    a = slot_owners({3: 1, 1: 1, 2: 1})
    b = slot_owners({1: 1, 2: 1, 3: 1})
    assert a == b
    assert slot_owners(equal([1, 2, 3, 4])) != a
    assert slot_owners(equal([1, 2, 3])) == a


@pytest.mark.parametrize("removed", range(1, 9))
def test_removing_a_dip_moves_only_its_slots(removed):
    before = slot_owners(equal(range(1, 9)))
    after = slot_owners(equal(d for d in range(1, 9) if d != removed))
    changed = moved(before, after)
    assert changed and all(before[s] == removed for s in changed)
    assert all(after[s] == before[s] for s in range(SLOTS) if before[s] != removed)


def test_adding_a_dip_takes_about_one_in_n_plus_one_and_only_for_itself():
    before = slot_owners(equal(range(1, 9)))
    after = slot_owners(equal(range(1, 10)))
    changed = moved(before, after)
    assert all(after[s] == 9 for s in changed)
    assert 0.05 < len(changed) / SLOTS < 0.2  # expected 1/9 = 0.11


def test_weights_bias_the_share():
    owners = slot_owners({1: 1, 2: 3}, slots=4096)
    share = owners.count(2) / len(owners)
    assert 0.7 < share < 0.8  # expected 3/4


def test_bad_weights_and_empty_sets():
    assert slot_owners({}) == ()
    with pytest.raises(ValueError, match="weights"):
        slot_owners({1: 0})


def test_a_moved_slot_starts_a_transition_from_its_old_owner():
    old = (1, 1, 2, 3)
    new = (1, 4, 2, 4)
    t = next_transitions(old, new, {}, now=100.0, duration=30.0)
    assert t == {1: Transition(previous=1, until=130.0), 3: Transition(previous=3, until=130.0)}


def test_transitions_end_keep_running_or_are_replaced():
    running = {0: Transition(previous=5, until=150.0), 1: Transition(previous=6, until=90.0)}
    same = (1, 1, 1)
    t = next_transitions(same, same, running, now=100.0, duration=30.0)
    assert t == {0: Transition(previous=5, until=150.0)}  # slot 1's ended at 90
    # Slot 0 moves again: only the owner just before is kept.
    t = next_transitions((1, 1, 1), (2, 1, 1), running, now=100.0, duration=30.0)
    assert t == {0: Transition(previous=1, until=130.0)}


def test_a_slot_back_at_its_previous_owner_needs_no_transition():
    running = {0: Transition(previous=2, until=500.0)}
    assert next_transitions((1,), (2,), running, now=100.0, duration=30.0) == {0: Transition(1, 130.0)}
    assert next_transitions((1,), (1,), {0: Transition(previous=1, until=500.0)}, now=100.0, duration=30.0) == {}


def test_no_duration_means_no_transitions_and_live_ones_filter_unknown_dips():
    assert next_transitions((1, 2), (2, 2), {}, now=0.0, duration=0) == {}
    t = {0: Transition(previous=1, until=10.0), 1: Transition(previous=9, until=10.0)}
    assert live_transitions(t, now=5.0, known={1, 2}) == {0: Transition(previous=1, until=10.0)}
    assert live_transitions(t, now=10.0) == {}
