"""Network-namespace plumbing the integration tests share: commands, environment, and a veth topology.

Test code never changes namespace itself: it runs commands (and Python
subprocesses, with ``python_env()``) under ``ip netns exec``. Polling goes
through ``mininet_topos.harness.wait_for``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from mininet_topos.harness import wait_for

REPO = Path(__file__).resolve().parents[2]
WAIT = 15.0  # seconds for any polled condition


def sh(*cmd: str, check: bool = True) -> str:
    """Run a command, return its stdout; with ``check``, fail the test naming it and its stderr."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *cmd: str, check: bool = True) -> str:
    """``sh`` inside network namespace ``ns``."""
    return sh("ip", "netns", "exec", ns, *cmd, check=check)


def nstat(ns: str) -> dict[str, int]:
    """Absolute kernel counters in namespace ``ns`` by name, as ``Datacenter.nstat`` gives a host's."""
    return json.loads(in_ns(ns, "nstat", "-asz", "--json"))["kernel"]


def wait_for_ipv6_dad(*namespaces: str) -> None:
    """Until no IPv6 address is tentative in these namespaces.

    A link-local address is tentative for a second or two after its link
    comes up, and until then neighbour discovery sends no solicitation from
    that interface: the first replies to a new neighbour wait, and the
    client's SYN times out once (TCPSynRetrans) though nothing was lost.
    """
    wait_for("IPv6 duplicate address detection", lambda: not any(
        in_ns(ns, "ip", "-6", "addr", "show", "tentative").strip() for ns in namespaces), WAIT)


def python_env() -> dict:
    """The environment for a Python subprocess that imports this repository's packages."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


class Namespaces:
    """A client and a server namespace joined by veth pairs.

    Names carry ``prefix`` and this process id so parallel runs do not
    collide. Pair ``i`` is ``{net}.{i}.1/24`` (client end) to ``{net}.{i}.2/24``
    (server end); with a ``vip``, the client routes VIP/32 over every pair,
    preferring the lower ``i``. A context manager: created on entry (torn down
    again if that fails), destroyed on exit.
    """

    def __init__(self, prefix: str, net: str, vip: str | None = None, pairs: int = 2) -> None:
        tag = os.getpid()
        self.server = f"{prefix}s{tag}"
        self.client = f"{prefix}c{tag}"
        self.veths = [(f"{prefix}{tag}c{i}", f"{prefix}{tag}s{i}") for i in range(pairs)]  # (client end, server end)
        self.server_ifs = [s for _, s in self.veths]
        self.net = net
        self.vip = vip

    def __enter__(self) -> Namespaces:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()

    def create(self) -> None:
        for ns in (self.server, self.client):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for i, (c_if, s_if) in enumerate(self.veths):
            sh("ip", "link", "add", c_if, "netns", self.client, "type", "veth", "peer", "name", s_if,
               "netns", self.server)
            sh("ip", "-n", self.client, "addr", "add", f"{self.net}.{i}.1/24", "dev", c_if)
            sh("ip", "-n", self.server, "addr", "add", f"{self.net}.{i}.2/24", "dev", s_if)
            sh("ip", "-n", self.client, "link", "set", c_if, "up")
            sh("ip", "-n", self.server, "link", "set", s_if, "up")
            if self.vip is not None:
                sh("ip", "-n", self.client, "route", "add", f"{self.vip}/32", "via", f"{self.net}.{i}.2",
                   "dev", c_if, "metric", str(100 * i))

    def destroy(self) -> None:
        """Tear down even after a failure: kill what runs inside, flush endpoints, delete all."""
        existing = sh("ip", "netns", "list", check=False).split()
        for ns in (self.server, self.client):
            if ns not in existing:
                continue
            for pid in sh("ip", "netns", "pids", ns, check=False).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_for(f"processes in {ns} to exit", lambda: not sh("ip", "netns", "pids", ns, check=False).split(), WAIT)
            in_ns(ns, "ip", "mptcp", "endpoint", "flush", check=False)
        if self.server in existing:
            self.clean_server()
        for c_if, _ in self.veths:
            sh("ip", "-n", self.client, "link", "del", c_if, check=False)
        for ns in (self.server, self.client):
            if ns in existing:
                sh("ip", "netns", "del", ns, check=False)

    def clean_server(self) -> None:
        """Undo what a test put on the server's interfaces, once nothing runs inside; nothing here."""


class ServerDriver:
    """DipPrograms and the recording echo server, in a subprocess inside the server namespace."""

    def __init__(self, ns: str, **cfg):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, str(REPO / "tests" / "integration" / "dip_server_driver.py"), json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=python_env(), cwd=REPO)
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True)
        self._reader.start()

    def call(self, cmd: str, **kw):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=WAIT)
            raise AssertionError(f"server driver died on {cmd}:\n{''.join(self._stderr)}")
        answer = json.loads(line)
        if not answer["ok"]:
            raise AssertionError(f"{cmd} failed in the server namespace:\n{answer['error']}")
        return answer["result"]

    def close(self) -> str:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=WAIT)
        self.proc.stdout.close()
        return "".join(self._stderr)
