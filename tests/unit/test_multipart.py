"""Multipart replies are bounded in size, count and age (ryu_app/multipart.py)."""

from ryu_app.multipart import MultipartBuffer


def test_parts_come_together_and_replies_of_two_switches_do_not_mix():
    buf = MultipartBuffer()
    assert buf.add(1, 7, [1, 2], more=True, now=0.0) is None
    assert buf.add(2, 7, ["x"], more=False, now=0.1) == ["x"]
    assert buf.add(1, 7, [3], more=False, now=0.2) == [1, 2, 3]
    assert buf.dropped == 0


def test_a_reply_that_never_ends_is_dropped_when_too_long_or_too_old():
    buf = MultipartBuffer(max_entries=5, ttl=10.0)
    for part in range(3):
        assert buf.add(1, 1, [0, 0], more=True, now=float(part)) is None
    assert buf.dropped == 1  # six entries: over five
    assert buf.add(1, 1, [9], more=False, now=4.0) == [9]  # a fresh start for that xid
    buf.add(1, 2, [0], more=True, now=5.0)
    assert buf.add(1, 3, [0], more=False, now=16.0) == [0]  # xid 2 expired meanwhile
    assert buf.dropped == 2 and buf.add(1, 2, [1], more=False, now=16.5) == [1]


def test_a_switch_may_not_keep_many_replies_open():
    buf = MultipartBuffer(max_pending=2)
    buf.add(1, 1, [0], more=True, now=0.0)
    buf.add(1, 2, [0], more=True, now=0.0)
    assert buf.add(1, 3, [0], more=True, now=0.0) is None and buf.dropped == 1
    assert buf.add(2, 3, [0], more=False, now=0.0) == [0]  # another switch is not affected
    buf.forget(1)
    assert buf.add(1, 4, [5], more=False, now=0.0) == [5]
