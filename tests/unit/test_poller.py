"""dip_agent/poller.py: polls fast while there is work, backs off while idle, survives a failing poll."""

import logging

import pytest

from dip_agent.poller import Poller


class ScriptedStop:
    """Stands in for the poller's stop event: records each wait asked for and stops after ``polls`` polls."""

    def __init__(self, polls: int):
        self.waits: list[float] = []
        self.polls = polls

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return len(self.waits) > self.polls

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


class Scripted(Poller):
    def __init__(self, results, **kw):
        super().__init__(0.02, **kw)
        self.results = list(results)

    def poll_once(self) -> int:
        result = self.results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result


def run(poller: Poller) -> list[float]:
    stop = ScriptedStop(len(poller.results))
    poller._stop = stop
    poller._run()
    return stop.waits


def test_idle_polls_back_off_to_the_idle_interval_and_work_brings_them_back():
    waits = run(Scripted([0, 0, 0, 0, 0, 0, 3, 0, 0, 1, 0]))
    assert waits == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.2, 0.2, 0.2, 0.02, 0.04, 0.08, 0.02, 0.04])


def test_a_failing_poll_is_logged_once_in_a_while_and_backed_off_from(caplog):
    with caplog.at_level(logging.ERROR):
        waits = run(Scripted([0, OSError("map gone"), OSError("map gone"), OSError("map gone"), 1]))
    assert waits == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.2, 0.02])
    failures = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert len(failures) == 1 and "(1 failures so far)" in failures[0].getMessage()
    assert "map gone" in caplog.text


def test_the_poll_interval_must_lie_within_the_idle_interval():
    with pytest.raises(ValueError, match=r"poll interval 0.5 is not in \(0, idle interval 0.2\]"):
        Poller(0.5, 0.2)
    with pytest.raises(ValueError, match="poll interval 0 is not"):
        Poller(0, 0.2)


def test_a_poller_starts_once_and_stops():
    poller = Scripted([0] * 1000)
    poller.start()
    with pytest.raises(RuntimeError, match="Scripted already started"):
        poller.start()
    poller.stop()
    assert poller._thread is None
    poller.stop()  # stopping twice is harmless
