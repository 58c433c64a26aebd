"""Health checks (ryu_app/health.py): the rise/fall state machine, and real probes on loopback."""

import asyncio
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from ryu_app.health import DOWN, UNKNOWN, UP, DipHealth, Prober, Target, probe


def test_unknown_counts_as_serving_until_fall_failures():
    h = DipHealth()
    assert h.state == UNKNOWN and h.serving
    assert [h.observe(False, t, rise=2, fall=3, error="refused") for t in (1, 2, 3)] == [False, False, True]
    assert h.state == DOWN and not h.serving and h.since == 3 and h.last_error == "refused"


def test_rise_successes_in_a_row_bring_a_dip_back_and_one_failure_restarts_the_count():
    h = DipHealth(state=DOWN)
    assert not h.observe(True, 1, rise=2, fall=3)
    assert not h.observe(False, 2, rise=2, fall=3)
    assert not h.observe(True, 3, rise=2, fall=3)
    assert h.observe(True, 4, rise=2, fall=3) and h.state == UP and h.last_error == ""


def test_an_up_dip_needs_fall_failures_in_a_row():
    h = DipHealth(state=UP)
    for t in range(5):
        h.observe(False, t, rise=2, fall=3)
        h.observe(True, t + 0.5, rise=2, fall=3)
    assert h.state == UP


def target(port, kind="tcp", path="/", expect=200, timeout=1.0):
    return Target(vip="web", dip=1, vip_address="127.0.0.1", dip_address="127.0.0.1", port=port, kind=kind,
                  path=path, expect_status=expect, timeout=timeout)


@pytest.fixture
def http_server():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the block ends


def test_tcp_and_http_probes_say_what_went_wrong(http_server):
    assert asyncio.run(probe(target(http_server))) == ""
    assert asyncio.run(probe(target(http_server, kind="http", path="/healthz"))) == ""
    assert asyncio.run(probe(target(http_server, kind="http", path="/other"))) == "HTTP status 503, expected 200"
    assert "refused" in asyncio.run(probe(target(closed_port()))).lower()


def test_a_silent_service_times_out():
    with socket.socket() as listener:  # accepts the connection, never answers the request
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        error = asyncio.run(probe(target(listener.getsockname()[1], kind="http", timeout=0.3)))
    assert error == "no answer within 0.3s"


def test_the_prober_reports_every_target_each_interval(http_server):
    seen = []
    done = threading.Event()

    def report(t, error, now):
        seen.append((t.port, error))
        if len(seen) >= 4:
            done.set()

    prober = Prober(report)
    prober.set_targets("web", [target(http_server), target(closed_port())], interval=0.05)
    prober.start()
    try:
        assert done.wait(5)
    finally:
        prober.stop()
    assert {error == "" for port, error in seen if port == http_server} == {True}
    assert all(error for port, error in seen if port != http_server)
