"""TimeWaitReaper's bookkeeping (dip_agent/time_wait.py); the netlink destroy itself is tested on the kernel
(tests/integration/test_token_modes.py: a client reusing a 4-tuple the DIP holds in TIME_WAIT)."""

import struct
import time

from dip_agent import time_wait
from dip_agent.dip_abi import pack_flow_key


class FakeMap:
    def __init__(self, entries):
        self.entries = dict(entries)

    def keys(self):
        return list(self.entries)

    def lookup(self, key):
        return self.entries.get(key)

    def delete(self, key):
        del self.entries[key]


def dropped_at(ns):
    return struct.pack("=Q", ns)


def test_each_drop_is_reaped_once_and_stale_entries_go(monkeypatch):
    calls = []
    monkeypatch.setattr(time_wait, "destroy_time_wait", lambda local, remote: calls.append((local, remote)) or True)
    now = time.monotonic_ns()
    fresh = pack_flow_key("10.0.3.1", 40123, "10.0.0.100", 80)
    stale = pack_flow_key("10.0.3.1", 40124, "10.0.0.100", 80)
    pending = FakeMap({fresh: dropped_at(now), stale: dropped_at(now - time_wait.WINDOW_NS - 1)})
    reaper = time_wait.TimeWaitReaper(pending)
    assert reaper.poll_once() == 1
    assert calls == [(("10.0.0.100", 80), ("10.0.3.1", 40123))]
    assert list(pending.entries) == [fresh]  # kept: the program reads it to drop that 4-tuple only once
    assert reaper.poll_once() == 0 and len(calls) == 1  # the same drop is not handled twice
    pending.entries[fresh] = dropped_at(now + 1)  # dropped again (a new TIME_WAIT for the 4-tuple)
    assert reaper.poll_once() == 1 and len(calls) == 2
    assert reaper.reaped == 2


def test_a_kernel_that_cannot_destroy_sockets_is_logged_once(monkeypatch, caplog):
    def refuse(local, remote):
        raise OSError(95, "SOCK_DESTROY: EOPNOTSUPP")

    monkeypatch.setattr(time_wait, "destroy_time_wait", refuse)
    now = time.monotonic_ns()
    pending = FakeMap({pack_flow_key("10.0.3.1", p, "10.0.0.100", 80): dropped_at(now) for p in (1000, 1001)})
    reaper = time_wait.TimeWaitReaper(pending)
    assert reaper.poll_once() == 0
    assert sum("cannot destroy TIME_WAIT sockets" in r.message for r in caplog.records) == 1
