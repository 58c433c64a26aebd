import logging

from ryu_app.app import guarded


class Shim:
    calls = 0

    @guarded
    def handler(self, ev):
        Shim.calls += 1
        raise RuntimeError(f"bad event {ev}")

    @guarded
    def fine(self, ev):
        return ev * 2


def test_handler_exception_is_logged_not_raised(caplog):
    # os-ken's native hub treats any Exception as TaskExit and silently ends the event loop.
    with caplog.at_level(logging.ERROR, logger="ryu_app.app"):
        assert Shim().handler(7) is None
        assert Shim().handler(8) is None
    assert Shim.calls == 2
    assert [r.message for r in caplog.records] == ["error in handler; carrying on"] * 2
    assert "bad event 8" in caplog.records[1].exc_text


def test_guard_passes_results_through():
    assert Shim().fine(21) == 42
