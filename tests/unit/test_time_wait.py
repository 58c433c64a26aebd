"""TimeWaitReaper's bookkeeping and its netlink messages (dip_agent/time_wait.py); destroying a real
TIME_WAIT is tested on the kernel (tests/integration/test_token_modes.py)."""

import errno
import socket
import struct
import time

import pytest

from dip_agent import time_wait
from dip_agent.dip_abi import TIME_WAIT_DROP, pack_flow_key

FRESH = pack_flow_key("10.0.3.1", 40123, "10.0.0.100", 80)
STALE = pack_flow_key("10.0.3.1", 40124, "10.0.0.100", 80)


class FakeMap:
    def __init__(self, entries):
        self.entries = dict(entries)

    def keys(self):
        yield from list(self.entries)

    def lookup(self, key):
        return self.entries.get(key)

    def delete(self, key):
        del self.entries[key]


def drop(ns, isn=7):
    return TIME_WAIT_DROP.pack(ns, isn, 0)


def test_the_netlink_structs_have_the_kernels_sizes():
    assert time_wait.DIAG_REQ.size == 56  # struct inet_diag_req_v2
    assert time_wait.DIAG_MSG_HEAD.size == 52  # struct inet_diag_msg up to idiag_expires


def test_a_reaped_drop_is_forgotten_and_a_stale_one_goes(monkeypatch):
    calls = []
    monkeypatch.setattr(time_wait, "destroy_time_wait", lambda *tuple_: calls.append(tuple_) or True)
    now = time.monotonic_ns()
    pending = FakeMap({FRESH: drop(now), STALE: drop(now - time_wait.TIME_WAIT_RETRY_NS - 1)})
    reaper = time_wait.TimeWaitReaper(pending, lambda: None)
    assert reaper.poll_once() == 1
    assert calls == [(socket.inet_aton("10.0.0.100"), (80).to_bytes(2, "big"), socket.inet_aton("10.0.3.1"),
                      (40123).to_bytes(2, "big"))]
    assert pending.entries == {}  # the retransmitted SYN finds only the listener: nothing to keep
    assert reaper.reaped == 1 and reaper.failed == 0


def test_a_failed_destroy_keeps_the_drop_so_the_retransmission_goes_through(monkeypatch):
    def fail(*tuple_):
        raise OSError(errno.ENOBUFS, "SOCK_DESTROY: ENOBUFS")

    monkeypatch.setattr(time_wait, "destroy_time_wait", fail)
    unsupported = []
    pending = FakeMap({FRESH: drop(time.monotonic_ns())})
    reaper = time_wait.TimeWaitReaper(pending, lambda: unsupported.append(1))
    assert reaper.poll_once() == 0 and reaper.poll_once() == 0
    assert list(pending.entries) == [FRESH]  # kept: the program lets this SYN's retransmission through
    assert reaper.failed == 1  # the same drop is not tried twice
    assert unsupported == [] and not reaper.gave_up  # a transient failure does not stop the drops


def test_a_time_wait_not_found_keeps_the_drop(monkeypatch):
    monkeypatch.setattr(time_wait, "destroy_time_wait", lambda *tuple_: False)
    pending = FakeMap({FRESH: drop(time.monotonic_ns())})
    reaper = time_wait.TimeWaitReaper(pending, lambda: None)
    assert reaper.poll_once() == 0
    assert list(pending.entries) == [FRESH] and reaper.reaped == 0


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EPERM])
def test_a_kernel_that_refuses_for_good_stops_the_drops_once(monkeypatch, caplog, code):
    def refuse(*tuple_):
        raise OSError(code, "SOCK_DESTROY")

    monkeypatch.setattr(time_wait, "destroy_time_wait", refuse)
    unsupported = []
    now = time.monotonic_ns()
    reaper = time_wait.TimeWaitReaper(FakeMap({FRESH: drop(now), STALE: drop(now - 1)}), lambda: unsupported.append(1))
    reaper.poll_once()
    assert unsupported == [1] and reaper.gave_up and reaper.failed == 2
    assert sum("will not destroy sockets" in r.message for r in caplog.records) == 1


class FakeNetlink:
    """Answers an inet_diag lookup with ``state``/``timer``, then a destroy with ``destroy_errno``."""

    def __init__(self, state, timer, destroy_errno=0):
        self.state, self.timer, self.destroy_errno, self.sent = state, timer, destroy_errno, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def settimeout(self, t):
        pass

    def send(self, data):
        self.sent.append(data)

    def recv(self, n):
        kind = struct.unpack_from("=H", self.sent[-1], 4)[0]
        if kind == time_wait.SOCK_DIAG_BY_FAMILY:
            body = time_wait.DIAG_MSG_HEAD.pack(socket.AF_INET, self.state, self.timer, 0, b"\0P", b"\x9c\xbb",
                                                b"\0" * 16, b"\0" * 16, 0, 11, 22) + b"\0" * 20
            return time_wait.NLMSG.pack(time_wait.NLMSG.size + len(body), kind, 0, 1, 0) + body
        body = struct.pack("=i", -self.destroy_errno) + self.sent[-1][:16]
        return time_wait.NLMSG.pack(time_wait.NLMSG.size + len(body), time_wait.NLMSG_ERROR, 0, 1, 0) + body


@pytest.mark.parametrize("state, timer, destroy_errno, destroyed, destroys", [
    (time_wait.TCP_TIME_WAIT, time_wait.TIMER_TIME_WAIT, 0, True, 1),
    (time_wait.TCP_FIN_WAIT2, time_wait.TIMER_TIME_WAIT, 0, True, 1),  # a TIME_WAIT in its FIN_WAIT2 substate
    (10, 0, 0, False, 0),  # the lookup fell back to the listener (TCP_LISTEN): never destroyed
    (time_wait.TCP_FIN_WAIT2, 0, 0, False, 0),  # a full socket closing: not a TIME_WAIT
    (time_wait.TCP_TIME_WAIT, time_wait.TIMER_TIME_WAIT, errno.ENOENT, False, 1),  # expired meanwhile
])
def test_only_a_time_wait_is_destroyed_and_by_its_cookie(monkeypatch, state, timer, destroy_errno, destroyed,
                                                         destroys):
    fake = FakeNetlink(state, timer, destroy_errno)
    monkeypatch.setattr(time_wait.socket, "socket", lambda *a: fake)
    vip, client = socket.inet_aton("10.0.0.100"), socket.inet_aton("10.0.3.1")
    assert time_wait.destroy_time_wait(vip, b"\0P", client, b"\x9c\xbb") is destroyed
    sent_destroys = [m for m in fake.sent if struct.unpack_from("=H", m, 4)[0] == time_wait.SOCK_DESTROY]
    assert len(sent_destroys) == destroys
    for m in sent_destroys:
        assert struct.unpack_from("=2I", m, time_wait.NLMSG.size + 48) == (11, 22)  # the socket's own cookie


def test_a_truncated_netlink_reply_is_an_error_not_a_loop(monkeypatch):
    class Truncated(FakeNetlink):
        def recv(self, n):
            return time_wait.NLMSG.pack(0, time_wait.SOCK_DIAG_BY_FAMILY, 0, 1, 0)

    monkeypatch.setattr(time_wait.socket, "socket", lambda *a: Truncated(0, 0))
    with pytest.raises(OSError, match="inet_diag"):
        time_wait.destroy_time_wait(b"\0" * 4, b"\0P", b"\0" * 4, b"\0P")


def test_an_ipv6_drop_is_destroyed_as_ipv6(monkeypatch):
    """A flow key holds IPv6 addresses as they are and IPv4 ones mapped: the request's family follows."""
    calls = []
    monkeypatch.setattr(time_wait, "destroy_time_wait", lambda *tuple_: calls.append(tuple_) or True)
    key6 = pack_flow_key("2001:db8:3::1", 40125, "2001:db8::100", 80)
    reaper = time_wait.TimeWaitReaper(FakeMap({key6: drop(time.monotonic_ns())}), lambda: None)
    assert reaper.poll_once() == 1
    assert calls == [(socket.inet_pton(socket.AF_INET6, "2001:db8::100"), (80).to_bytes(2, "big"),
                      socket.inet_pton(socket.AF_INET6, "2001:db8:3::1"), (40125).to_bytes(2, "big"))]
    fake = FakeNetlink(time_wait.TCP_TIME_WAIT, time_wait.TIMER_TIME_WAIT)
    monkeypatch.undo()
    monkeypatch.setattr(time_wait.socket, "socket", lambda *a: fake)
    assert time_wait.destroy_time_wait(*calls[0]) is True
    for message in fake.sent:  # struct inet_diag_req_v2 opens with the family, the sockid holds the addresses
        assert message[time_wait.NLMSG.size] == socket.AF_INET6
        assert message[time_wait.NLMSG.size + 12:time_wait.NLMSG.size + 28] == calls[0][0]


def test_an_ipv6_vips_drop_from_an_ipv4_mapped_client_is_destroyed_as_ipv6(monkeypatch):
    """An IPv6 socket's peer may be IPv4-mapped: both addresses go to inet_diag in IPv6 form."""
    calls = []
    monkeypatch.setattr(time_wait, "destroy_time_wait", lambda *tuple_: calls.append(tuple_) or True)
    key = pack_flow_key("::ffff:10.0.3.1", 40126, "2001:db8::100", 80)
    assert time_wait.TimeWaitReaper(FakeMap({key: drop(time.monotonic_ns())}), lambda: None).poll_once() == 1
    assert calls[0][0] == socket.inet_pton(socket.AF_INET6, "2001:db8::100")
    assert calls[0][2] == socket.inet_pton(socket.AF_INET6, "::ffff:10.0.3.1")
