"""Health checks: probe each DIP's service the way a client reaches it, through the VIP.

A probe connects to ``VIP:port`` (TCP, or an HTTP GET whose status must match)
but is delivered to one chosen DIP: its socket carries a mark, and a policy
route for that mark sends everything via the DIP's fabric address on the
probe interface, so the frame reaches that DIP's MAC with the VIP as its
destination, exactly as a MUX would hand it over. A DIP whose VIP is gone
from ``lo``, whose service died or whose link is down fails, whatever else
still answers on its own address. (Katran's health checker marks probes the
same way; it encapsulates them because its fabric is routed.)

Three parts, I/O at the edges:

- ``DipHealth``: the rise/fall state machine for one DIP. Pure.
- ``ProbeRoutes``: the marks, rules and tables on the probe interface (netlink).
- ``Prober``: an asyncio loop in its own thread that probes every target each
  interval and reports each result; the controller's core decides what a
  result means (``LbCore.health_result``) so every MUX gets the same table.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

UNKNOWN, UP, DOWN = "unknown", "up", "down"
# Marks and routing tables for probes: MARK_BASE | n, one per DIP address on the probe interface.
MARK_BASE = 0x4D4C0000
MARK_MASK = 0xFFFF0000
RULE_PRIORITY = 9000  # after "local" (0), before "main" (32766)
MAX_RESPONSE = 4096  # bytes of an HTTP response read to find its status line


@dataclass
class DipHealth:
    """One DIP's health: ``fall`` failures in a row take it down, ``rise`` successes bring it back.

    A DIP starts ``unknown``, which counts as up: a controller that starts,
    or a DIP just added, must not empty a VIP before the first probes ran.
    """

    state: str = UNKNOWN
    successes: int = 0
    failures: int = 0
    since: float | None = None  # wall-clock time of the last change of state
    last_error: str = ""

    @property
    def serving(self) -> bool:
        return self.state != DOWN

    def observe(self, ok: bool, now: float, rise: int, fall: int, error: str = "") -> bool:
        """Count one probe result; True when the state changed."""
        if ok:
            self.successes, self.failures, self.last_error = self.successes + 1, 0, ""
            new = UP if self.state != DOWN or self.successes >= rise else DOWN
        else:
            self.successes, self.failures, self.last_error = 0, self.failures + 1, error
            new = DOWN if self.failures >= fall else self.state
        if new == self.state:
            return False
        self.state, self.since = new, now
        return True

    def view(self) -> dict:
        return {"state": self.state, "since": self.since, "last_error": self.last_error}


@dataclass(frozen=True)
class Target:
    """One DIP of one VIP, as the prober reaches it."""

    vip: str
    dip: int
    vip_address: str
    dip_address: str
    port: int
    kind: str  # "tcp" | "http"
    path: str
    expect_status: int
    timeout: float
    mark: int = 0


async def _connect(target: Target) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, target.mark)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (target.vip_address, target.port))
    except BaseException:
        sock.close()
        raise
    return sock


async def _http_status(sock: socket.socket, target: Target) -> int:
    loop = asyncio.get_running_loop()
    request = (f"GET {target.path} HTTP/1.0\r\nHost: {target.vip_address}\r\n"
               "User-Agent: mptcp-lb-health\r\nConnection: close\r\n\r\n").encode()
    await loop.sock_sendall(sock, request)
    data = b""
    while b"\r\n" not in data and len(data) < MAX_RESPONSE:
        chunk = await loop.sock_recv(sock, MAX_RESPONSE)
        if not chunk:
            break
        data += chunk
    parts = data.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {data[:60]!r}")
    return int(parts[1])


async def probe(target: Target) -> str:
    """'' if the DIP answered as expected, else what went wrong."""
    try:
        async with asyncio.timeout(target.timeout):
            sock = await _connect(target)
            try:
                if target.kind == "http":
                    status = await _http_status(sock, target)
                    if status != target.expect_status:
                        return f"HTTP status {status}, expected {target.expect_status}"
            finally:
                sock.close()
    except TimeoutError:
        return f"no answer within {target.timeout:g}s"
    except OSError as e:
        return os.strerror(e.errno) if e.errno else str(e) or type(e).__name__
    except ValueError as e:
        return str(e)
    return ""


class ProbeRoutes:
    """Policy routes that deliver a probe with mark M via one DIP's address on the probe interface.

    One mark and table per DIP address: ``ip rule fwmark M lookup M`` and
    ``default via DIP dev IF`` in table M. ``sync`` makes the host hold
    exactly the routes for the given addresses; ``clear`` removes every rule
    in the mark range (also those a killed controller left behind).
    """

    def __init__(self, interface: str):
        self.interface = interface
        self.marks: dict[str, int] = {}

    def mark(self, address: str) -> int:
        return self.marks.get(address, 0)

    def sync(self, addresses: Iterable[str]) -> None:
        from pyroute2 import IPRoute

        wanted = sorted(set(addresses))
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=self.interface)
            if not found:
                raise RuntimeError(f"controller.probe_interface: {self.interface} does not exist")
            ifindex = found[0]
            for address in list(self.marks):
                if address not in wanted:
                    self._drop(ipr, self.marks.pop(address))
            used = set(self.marks.values())
            for address in wanted:
                if address in self.marks:
                    continue
                mark = next(MARK_BASE | n for n in range(1, 0x10000) if MARK_BASE | n not in used)
                used.add(mark)
                self._drop(ipr, mark)
                ipr.route("replace", dst="0.0.0.0/0", gateway=address, oif=ifindex, table=mark)
                ipr.rule("add", fwmark=mark, fwmask=0xFFFFFFFF, table=mark, priority=RULE_PRIORITY)
                self.marks[address] = mark

    @staticmethod
    def _drop(ipr, mark: int) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        for rule in ipr.get_rules():
            if rule.get_attr("FRA_FWMARK") == mark and rule.get_attr("FRA_PRIORITY") == RULE_PRIORITY:
                ipr.rule("del", fwmark=mark, fwmask=0xFFFFFFFF, table=mark, priority=RULE_PRIORITY)
        try:
            ipr.flush_routes(table=mark)
        except NetlinkError:
            pass

    def clear(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            marks = {r.get_attr("FRA_FWMARK") for r in ipr.get_rules()
                     if r.get_attr("FRA_PRIORITY") == RULE_PRIORITY
                     and (r.get_attr("FRA_FWMARK") or 0) & MARK_MASK == MARK_BASE}
            for mark in marks | set(self.marks.values()):
                self._drop(ipr, mark)
        self.marks = {}


@dataclass
class _Schedule:
    targets: list[Target] = field(default_factory=list)
    interval: float = 1.0


class Prober:
    """Probes every target each interval from an asyncio loop in a thread; reports each result.

    ``report(target, error, now)`` gets '' for a success. ``set_targets``
    replaces what is probed (per VIP, with its interval) at any time.
    """

    def __init__(self, report: Callable[[Target, str, float], None], clock: Callable[[], float] = time.time):
        self._report = report
        self._clock = clock
        self._schedules: dict[str, _Schedule] = {}
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def set_targets(self, vip: str, targets: list[Target], interval: float) -> None:
        with self._lock:
            if targets:
                self._schedules[vip] = _Schedule(list(targets), interval)
            else:
                self._schedules.pop(vip, None)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),),
                                        name="mptcp-lb-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    async def _main(self) -> None:
        tasks: dict[str, asyncio.Task] = {}
        while not self._stopping.is_set():
            with self._lock:
                names = set(self._schedules)
            for vip in names - set(tasks):
                tasks[vip] = asyncio.create_task(self._vip_loop(vip))
            for vip in set(tasks) - names:
                tasks.pop(vip).cancel()
            await asyncio.sleep(0.1)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)

    async def _vip_loop(self, vip: str) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            with self._lock:
                schedule = self._schedules.get(vip)
            if schedule is None:
                return
            errors = await asyncio.gather(*(probe(t) for t in schedule.targets))
            now = self._clock()
            for target, error in zip(schedule.targets, errors):
                try:
                    self._report(target, error, now)
                except Exception:  # one bad report must not stop probing
                    log.exception("health: reporting %s DIP %d failed", target.vip, target.dip)
            next_round = max(next_round + schedule.interval, loop.time())
            await asyncio.sleep(next_round - loop.time())


class HealthChecks:
    """The controller's health checks: probe routes on ``interface`` and a prober for every checked VIP.

    ``report(target, error, now)`` gets each result; ``update(config)`` makes
    the routes and targets follow the config (DIPs added and removed). Until
    the routes are in place (the interface may come up after the
    controller), nothing is probed: a probe without its route would leave by
    the default route and take a healthy DIP down.
    """

    def __init__(self, interface: str, report: Callable[[Target, str, float], None]):
        self.routes = ProbeRoutes(interface)
        self.prober = Prober(report, clock=time.monotonic)
        self.ready = False  # the routes are in place
        self._said_paused = False  # say so once, not every retry
        self._lock = threading.Lock()  # update() against stop(): no route may come back after stop() cleared
        self._stopped = False

    def update(self, config) -> bool:
        """Routes and targets for ``config``; False (logged) when the routes cannot be set up yet."""
        with self._lock:
            return False if self._stopped else self._update(config)

    def _update(self, config) -> bool:
        from pyroute2.netlink.exceptions import NetlinkError

        checked = [v for v in config.vips if v.health.kind != "none"]
        try:
            self.routes.sync(d.address for v in checked for d in v.dips)
        except (RuntimeError, NetlinkError, OSError) as e:
            if not self._said_paused:
                log.error("health checks paused (retried every audit): %s", e)
                self._said_paused = True
            self.ready = False
            for v in config.vips:
                self.prober.set_targets(v.name, [], 1.0)
            return False
        self.ready, self._said_paused = True, False
        for v in config.vips:
            hc = v.health
            targets = [Target(vip=v.name, dip=d.id, vip_address=v.address, dip_address=d.address,
                              port=hc.port or v.port, kind=hc.kind, path=hc.path, expect_status=hc.expect_status,
                              timeout=hc.timeout, mark=self.routes.mark(d.address))
                       for d in v.dips] if hc.kind != "none" else []
            self.prober.set_targets(v.name, targets, hc.interval)
        return True

    def start(self, config) -> None:
        try:
            self.routes.clear()  # what a killed controller left behind
        except OSError as e:
            log.error("health checks: cannot clear old probe routes: %s", e)
        if self.update(config):
            log.info("health checks through %s", self.routes.interface)
        self.prober.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        try:
            self.prober.stop()
        finally:
            self.routes.clear()


__all__ = ["DipHealth", "Target", "probe", "ProbeRoutes", "Prober", "HealthChecks", "UNKNOWN", "UP", "DOWN"]
