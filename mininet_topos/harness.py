"""Bring the whole system up on the datacenter topology, and take it down again.

``Datacenter`` is what the demo and the integration tests share: it writes
the config, starts the real controller, builds the Mininet topology on the
OVS userspace datapath, starts a real DIP agent in each DIP, and cleans up
everything (processes, MPTCP endpoints, bridges, veths) even when a step fails.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

from mininet_topos.datacenter import (SERVICE_PORT, VIP, VIP6, DatacenterTopo, mgmt_interface, mux_address,
                                      router_bird_config, speaker_address, topology_config)
from mptcp_lb.config import parse_config

log = logging.getLogger(__name__)


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback, from below the kernel's ephemeral range.

    bind() to port 0 draws from the ephemeral range, which every outgoing
    connection draws its source port from too: two calls could return the same
    port (a topology's REST API once took its OpenFlow port, and the switches
    talked to it), and a connection could take one before its listener binds.
    """
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral_low = int(f.read().split()[0])
    candidates = range(max(1024, ephemeral_low - 10000), ephemeral_low) if ephemeral_low > 2048 else range(1024, 65536)
    ports: list[int] = []
    while len(ports) < n:
        port = random.choice(candidates)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def wait_for(what: str, check, timeout: float, interval: float = 0.1):
    """Poll ``check`` until it returns something truthy; raise naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def ofctl_flow_count(bridge: str) -> int:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if "cookie=" in line)


def datapath_port_numbers() -> dict[str, int]:
    """OVS port name -> its port number in the shared netdev datapath (what ``in_port(N)`` in a datapath flow is)."""
    out = subprocess.run(["ovs-appctl", "dpif/show"], capture_output=True, text=True, check=True).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s+(\S+) \d+/(\d+):", out, re.M)}


def datapath_flow_count(match: str = "") -> int:
    """Flows in the shared netdev datapath, optionally only lines containing ``match``."""
    out = subprocess.run(["ovs-appctl", "dpctl/dump-flows", "netdev@ovs-netdev"],
                         capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if match in line)


def require_platform(bird: bool = False) -> None:
    """Fail early, naming what is missing, instead of half-building a topology (``bird``: BIRD 2 too)."""
    if os.geteuid() != 0:
        raise RuntimeError("needs root (network namespaces, Open vSwitch)")
    for tool in ("ovs-vsctl", "mnexec", "ethtool", "ip", *(("bird", "birdc") if bird else ())):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            raise RuntimeError(f"{tool} not found: run `make bootstrap` (apt packages)")
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode:
        raise RuntimeError("Open vSwitch is not running: run `make ovs`")
    if not os.path.exists("/proc/sys/net/mptcp/enabled"):
        raise RuntimeError("this kernel has no MPTCP (/proc/sys/net/mptcp missing)")


class Datacenter:
    """The whole system on the datacenter topology: a public API for scripting scenarios.

    Use it as a context manager; everything it started is torn down on exit,
    even after a failure. The arguments:

    - ``n_dips``, ``prefix`` (makes every name unique), ``workdir`` (config and logs);
    - ``mode`` (``port``, ``token``, ``hybrid``), ``key_source`` (``seed``, ``pool``),
      ``punt_rate``, ``key_adoption`` (False: a control where DIPs keep their own keys);
    - ``port_type``: the OVS port type of every bridge port (``mptcp_lb.datapath``;
      None: ``afxdp`` where supported, else ``system``). In the token modes the
      classifier sits in front of both MUX bridges (``mptcp_lb.classifier``);
    - ``echo``: the DIP agents also serve the echo service that ``run_traffic``
      talks to (False leaves the VIP's port to your own server);
    - ``transition_time``: seconds a moved slot gives its connections a second
      chance at their old DIP (``controller.transition_time``);
    - ``spare_dips``: DIP hosts (ids ``n_dips + 1``...) with their agents
      running, which the controller does not know until ``add_dip``;
    - ``tls``: the MUXes speak OpenFlow to the controller over TLS with
      certificates from a test PKI (``ovs-pki``) in ``workdir``, and each
      MUX's dpid is pinned to the switch certificate and to 127.0.0.1;
    - ``bgp``: the router learns the VIP over BGP (BIRD 2, BFD) from a speaker
      on each MUX bridge (``muxes[].bgp``, ``mptcp-lb bird-config``) instead
      of a static route; ``vip_nexthops`` reads the router's route and
      ``fail_mux`` takes a MUX's datapath away. ``bgp_lease_time`` is the
      speakers' ``lease_time`` (None: the default);
    - ``ipv6``: a dual-stack topology and VIP (``VIP6``, token and hybrid
      modes): ``run_traffic(..., ipv6=True)`` connects to it;
    - ``classifier_hook`` (token and hybrid modes): None or ``"tc"`` puts
      each MUX's classifier at tc ingress of its uplink; ``"xdp"`` in native
      XDP where it can (before ``afxdp`` ports).
      ``classifier_hooks`` says where each one runs;
    - ``progress``: called with a line of text at each step.

    The controller probes the DIPs' health through the topology's management
    port and keeps its runtime state in ``state_file`` (in ``workdir``), so
    ``kill_controller`` and ``start_controller`` pick up where it was.
    """

    def __init__(self, n_dips: int = 3, prefix: str = "", workdir: str | None = None,
                 progress=lambda msg: log.info("%s", msg), mode: str = "port", key_source: str = "seed",
                 punt_rate: int = 100, key_adoption: bool = True, port_type: str | None = None,
                 echo: bool = True, transition_time: float = 300.0, spare_dips: int = 0, tls: bool = False,
                 bgp: bool = False, bgp_lease_time: int | None = None, ipv6: bool = False,
                 classifier_hook: str | None = None):
        from mptcp_lb.datapath import resolve_port_type

        if classifier_hook not in (None, "tc", "xdp"):
            raise ValueError(f"classifier_hook {classifier_hook!r}: None or 'tc' (tc ingress) or 'xdp'")
        if classifier_hook and mode == "port":
            raise ValueError(f"classifier_hook {classifier_hook!r}: port mode runs no classifier")
        self.n_dips = n_dips
        self.spare_dips = spare_dips
        self.port_type = resolve_port_type(port_type)
        self.prefix = prefix
        self.progress = progress
        self.mode = mode
        self.workdir = workdir or tempfile.mkdtemp(prefix="mptcp-lb-")
        self.state_file = os.path.join(self.workdir, "state.json")
        self.token_file = os.path.join(self.workdir, "api.token")
        # The agents' config names every DIP; the controller's leaves the spare ones out.
        of_port, api_port, metrics_port = free_ports(3)
        self.agent_config = topology_config(n_dips + spare_dips, of_port=of_port, api_port=api_port,
                                            mode=mode, key_source=key_source, punt_rate=punt_rate, prefix=prefix,
                                            state_file=self.state_file, transition_time=transition_time,
                                            explicit_slices=spare_dips > 0, api_token_file=self.token_file,
                                            metrics_port=metrics_port, bgp=bgp, bgp_lease_time=bgp_lease_time,
                                            ipv6=ipv6)
        parse_config(self.agent_config)  # a combination the config refuses (ipv6 with bgp, say) fails here, by name
        self.config = json.loads(json.dumps(self.agent_config))
        self.config["vips"][0]["dips"] = self.config["vips"][0]["dips"][:n_dips]
        self.key_adoption = key_adoption
        self.echo = echo
        self.tls = tls
        self.bgp = bgp
        self.ipv6 = ipv6
        self.birds: dict[str, subprocess.Popen] = {}  # host name -> its BIRD
        self.failed_muxes: list[int] = []
        self.pki: TestPki | None = None
        self.classified: list[int] = []  # MUXes whose uplink has the classifier in front of OVS
        self.classifier_hook = classifier_hook
        self.classifier_hooks: dict[int, str] = {}  # MUX -> where its classifier runs: "xdp" or "tc"
        self._ovs_config: dict[str, str | None] = {}  # OVS settings place_pmd() changed
        self.config_path = os.path.join(self.workdir, "config.yaml")
        self.agent_config_path = os.path.join(self.workdir, "agents.yaml")
        self.net = None
        self.controller = None
        self.agents: dict[int, subprocess.Popen] = {}

    # ------------------------------------------------------------ names

    def host(self, name: str):
        return self.net.get(self.prefix + name)

    @property
    def client(self):
        return self.host("c1")

    def mux_uplink(self, i: int) -> str:
        """The MUX's interface towards the router: where the classifier sits (``mptcp_lb.classifier``)."""
        return f"{self.prefix}mux{i}-eth1"

    @property
    def router(self):
        return self.host("r0")

    def dip_host(self, i: int):
        return self.host(f"d{i}")

    def mux_bridge(self, i: int) -> str:
        return f"{self.prefix}mux{i}"

    def mux_router_port(self, i: int) -> str:
        """MUX i's OVS port towards the router: its uplink, or the uplink's classifier tap."""
        if i in self.classified:
            from mptcp_lb.classifier import tap_names

            return tap_names(socket.if_nametoindex(self.mux_uplink(i)))[1]
        return self.mux_uplink(i)

    # ------------------------------------------------------------ lifecycle

    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self) -> None:
        from mininet.net import Mininet
        from mininet.node import RemoteController

        require_platform(bird=self.bgp)
        if self.tls:
            self.pki = TestPki(os.path.join(self.workdir, "pki"))
            self.pki.create()
            self.config["controller"]["tls"] = self.pki.controller_settings()
            for mux in self.config["muxes"]:
                mux.update(pin_address="127.0.0.1", pin_cert_sha256=self.pki.switch_cert_sha256())
            self.pki.use_for_ovs()
        for path, config in ((self.config_path, self.config), (self.agent_config_path, self.agent_config)):
            with open(path, "w") as f:
                yaml.safe_dump(config, f, sort_keys=False)
        if not os.path.exists(self.token_file):
            from ryu_app.api import write_token

            write_token(self.token_file)
        from mptcp_lb.datapath import PMD_PORT_TYPES, place_pmd

        rps_cpus = 0
        if self.port_type in PMD_PORT_TYPES:
            rps_cpus, self._ovs_config = place_pmd()
        topo = DatacenterTopo(n_dips=self.n_dips + self.spare_dips, prefix=self.prefix, port_type=self.port_type,
                              rps_cpus=rps_cpus, bgp=self.bgp, ipv6=self.ipv6)
        ctl = self.config["controller"]
        self.net = Mininet(topo=topo, controller=None, autoSetMacs=False, build=False, waitConnected=False)
        class StartedLater(RemoteController):
            """The controller starts once the agents are up: nothing to check for yet."""

            def checkListening(self):
                pass

        self.net.addController(f"{self.prefix}ctl", controller=StartedLater, ip="127.0.0.1",
                               port=ctl["openflow_port"], protocol="ssl" if self.tls else "tcp")
        self.net.build()
        self.net.start()
        self.progress(f"topology up: 2 clients, router, 2 MUXes, fabric, {self.n_dips} DIPs; "
                      f"OVS ports: {self.port_type}{'; dual-stack' if self.ipv6 else ''}")
        if self.ipv6:
            self.wait_ipv6_addresses()
        if self.mode != "port":
            from mptcp_lb import classifier

            for i in (1, 2):
                self.classifier_hooks[i] = classifier.insert(
                    self.mux_bridge(i), self.mux_uplink(i), self.port_type, hook=self.classifier_hook,
                    budgets=classifier.punt_budgets(parse_config(self.config))).hook
                self.classified.append(i)
            hooks = sorted(set(self.classifier_hooks.values()), reverse=True)
            where = " and ".join("native XDP" if h == "xdp" else "tc ingress" for h in hooks)
            self.progress(f"MPTCP classifier in front of both MUX bridges ({where} of their uplinks)")
        if self.bgp:
            self.start_birds()
        # The agents first: a controller that probed DIPs whose agents were not up yet would
        # take them down, and move their slots back and forth once they came up.
        for i in self.all_dips:
            self.start_agent(i)
        for i in self.all_dips:
            self.wait_agent(i)
        self.progress(f"{len(self.all_dips)} DIP agents ready")
        self.start_controller()
        self.wait_programmed()
        if self.echo:  # without it, nothing serves until your own server starts: then wait_healthy()
            self.wait_healthy()
        self.progress("controller connected to both MUXes, flows installed"
                      + (", every DIP healthy" if self.echo else ""))
        if self.bgp:
            self.wait_announced([1, 2])
            self.progress(f"BGP: the router routes the VIP over {', '.join(self.vip_nexthops())}")

    def wait_ipv6_addresses(self, timeout: float = 15) -> None:
        """Until no host's IPv6 address is tentative: until then neighbour discovery solicits nothing from it.

        Global addresses are added without duplicate address detection; each
        link-local one takes a second or two after its link comes up, and a
        reply to a new neighbour meanwhile waits (a client's SYN then times
        out once though nothing was lost).
        """
        hosts = [h for h in self.net.hosts if h.inNamespace]
        wait_for("IPv6 duplicate address detection on every host",
                 lambda: not any(h.cmd("ip -6 addr show tentative").strip() for h in hosts), timeout)

    def wait_programmed(self, timeout: float = 30) -> None:
        """Until the controller has programmed both MUXes."""
        wait_for("the controller to program both MUXes",
                 lambda: all(m["connected"] and m["flows"] > 0 and ofctl_flow_count(self.mux_bridge(i)) > 0
                             for i, m in enumerate(self.api("GET", "/muxes"), start=1)), timeout)

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until the health checks find every DIP up and no slot is in transition any more."""
        wait_for("every DIP to be healthy", lambda: self.health() == {i: "up" for i in self.dip_ids()}, timeout)
        wait_for("no slot in transition", lambda: self.api("GET", "/vips")[0]["slots_in_transition"] == 0,
                 timeout + self.config["controller"]["transition_time"])

    @property
    def all_dips(self) -> range:
        """Every DIP host's id, the spare ones included."""
        return range(1, self.n_dips + self.spare_dips + 1)

    def add_dip(self, i: int):
        """Tell the controller about DIP ``i`` (a spare one) through its REST API; returns the reply."""
        (entry,) = [d for d in self.agent_config["vips"][0]["dips"] if d["id"] == i]
        return self.api("POST", "/vips/web/dips", entry)

    def slot_shares(self) -> dict[int, float]:
        """DIP id -> its share of the VIP's slots now: how likely a new connection is to land on it."""
        vip = self.api("GET", "/vips")[0]
        return {d["id"]: d["slots"] / vip["slots"] for d in vip["dips"]}

    def dip_ids(self) -> list[int]:
        """The DIPs the controller knows now (the API may have added or removed some)."""
        return [d["id"] for d in self.api("GET", "/vips")[0]["dips"]]

    def health(self) -> dict[int, str]:
        """DIP id -> what the controller's health checks say of it (unknown, up, down)."""
        return {d["id"]: d["health"]["state"] for d in self.api("GET", "/vips")[0]["dips"]}

    def start_controller(self) -> None:
        """Start the controller (again): it carries on from ``state_file``; its log is appended to."""
        logf = open(os.path.join(self.workdir, "controller.log"), "a")
        self.controller = subprocess.Popen(
            [sys.executable, "-m", "mptcp_lb.cli", "controller", "--config", self.config_path],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()

        def api_up():
            if self.controller.poll() is not None:
                raise RuntimeError(f"controller exited: {self.controller_log()[-2000:]}")
            try:
                return self.api("GET", "/vips") is not None
            except OSError:
                return False
        wait_for("the controller's REST API", api_up, 20)

    def controller_log(self) -> str:
        with open(os.path.join(self.workdir, "controller.log")) as f:
            return f.read()

    def start_agent(self, i: int) -> None:
        ready = os.path.join(self.workdir, f"d{i}.ready")
        logf = open(os.path.join(self.workdir, f"d{i}.log"), "w")
        self.agents[i] = self.dip_host(i).popen(
            [sys.executable, "-m", "mptcp_lb.cli", "dip-agent", "--config", self.agent_config_path,
             "--dip", str(i), "--ready-file", ready, *([] if self.key_adoption else ["--no-key-adoption"]),
             *(["--echo"] if self.echo else [])],
            stdout=logf, stderr=subprocess.STDOUT)
        logf.close()

    def wait_agent(self, i: int) -> None:
        ready = os.path.join(self.workdir, f"d{i}.ready")

        def is_ready():
            if self.agents[i].poll() is not None:
                with open(os.path.join(self.workdir, f"d{i}.log")) as f:
                    raise RuntimeError(f"DIP agent d{i} exited with {self.agents[i].returncode}: {f.read()[-2000:]}")
            return os.path.exists(ready)
        wait_for(f"DIP agent d{i}", is_ready, 20)

    def stop_agent(self, i: int) -> None:
        proc = self.agents.pop(i, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # ------------------------------------------------------------ BGP

    def start_birds(self) -> None:
        """A BIRD in the router and in each MUX's speaker host, each logging to ``workdir``."""
        from mptcp_lb.bgp import speaker_config

        confs = {"r0": router_bird_config(self.prefix)}
        parsed = parse_config(self.config)
        for i, mux in enumerate(parsed.muxes, start=1):
            confs[f"bgp{i}"] = speaker_config(parsed, mux)
        for name, text in confs.items():
            path = os.path.join(self.workdir, f"bird-{name}.conf")
            with open(path, "w") as f:
                f.write("log stderr all;\n" + text)
            with open(os.path.join(self.workdir, f"bird-{name}.log"), "w") as logf:
                self.birds[name] = self.host(name).popen(
                    ["bird", "-f", "-c", path, "-s", self._bird_socket(name), "-P",
                     os.path.join(self.workdir, f"bird-{name}.pid")], stdout=logf, stderr=subprocess.STDOUT)

    def _bird_socket(self, name: str) -> str:
        return os.path.join(self.workdir, f"bird-{name}.ctl")

    def birdc(self, name: str, command: str) -> str:
        """A ``birdc`` command to the BIRD of host ``name`` (``r0``, ``bgp1``, ``bgp2``); its output."""
        return subprocess.run(["birdc", "-s", self._bird_socket(name), *command.split()],
                              capture_output=True, text=True, timeout=10).stdout

    def stop_birds(self) -> None:
        for name, proc in self.birds.items():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.birds = {}

    def vip_nexthops(self) -> list[str]:
        """The router's next hops for the VIP, as its kernel routing table shows them (sorted)."""
        routes = json.loads(self.router.cmd(f"ip -j route show {VIP}/32") or "[]")
        hops = [h["gateway"] for r in routes for h in r.get("nexthops", [r]) if "gateway" in h]
        return sorted(hops)

    def bfd_up_speakers(self) -> list[str]:
        """The speakers whose BFD session with the router is up, as the router's BIRD shows them (sorted)."""
        lines = self.birdc("r0", "show bfd sessions").splitlines()
        return sorted(f.split()[0] for f in lines if len(f.split()) > 2 and f.split()[2] == "Up")

    def wait_announced(self, muxes: list[int], timeout: float = 30) -> None:
        """Until the router routes the VIP over exactly these MUXes, and BFD watches each of their speakers.

        Before BFD is up, only the BGP hold time (3 s) would notice a failure.
        """
        want = sorted(mux_address(i) for i in muxes)
        speakers = sorted(speaker_address(i) for i in muxes)
        wait_for(f"the router to route the VIP over {want}, with BFD up to {speakers}",
                 lambda: self.vip_nexthops() == want and set(speakers) <= set(self.bfd_up_speakers()), timeout)

    def fail_mux(self, i: int) -> None:
        """MUX i's datapath is gone (its bridge deleted) while its links stay up, as when its host hangs.

        Only BFD can tell the router: nothing takes a link down.
        """
        subprocess.run(["ovs-vsctl", "del-br", self.mux_bridge(i)], check=True, capture_output=True)
        self.failed_muxes.append(i)

    def fail_mux_and_time_withdrawal(self, i: int, timeout: float = 30) -> float:
        """``fail_mux(i)``; the seconds until the router's routing table no longer routes the VIP through it."""
        survivors = [h for h in self.vip_nexthops() if h != mux_address(i)]
        t0 = time.monotonic()
        self.fail_mux(i)
        wait_for(f"the router to route the VIP over {survivors} only", lambda: self.vip_nexthops() == survivors,
                 timeout, interval=0.01)
        return time.monotonic() - t0

    def stop(self) -> None:
        """Tear everything down; every step runs even if an earlier one fails."""
        for i in list(self.agents):
            try:
                self.stop_agent(i)
            except Exception:  # keep cleaning
                log.exception("stopping agent d%d", i)
        try:
            self.stop_birds()
        except Exception:
            log.exception("stopping BIRD")
        for i in self.classified:
            try:
                from mptcp_lb import classifier

                classifier.remove(self.mux_bridge(i), self.mux_uplink(i))
            except Exception:
                log.exception("removing the classifier from %s", self.mux_uplink(i))
        self.classified = []
        self.classifier_hooks = {}
        if self.net is not None:
            for i in self.all_dips:
                try:
                    # A signal endpoint with a port would keep the netns (and veths) alive.
                    self.dip_host(i).cmd("ip mptcp endpoint flush")
                except Exception:
                    log.exception("flushing endpoints on d%d", i)
            try:
                self.net.stop()
            except Exception:
                log.exception("stopping mininet")
            self.net = None
        for name in [f"{self.prefix}mux1", f"{self.prefix}mux2", f"{self.prefix}fab"]:
            subprocess.run(["ovs-vsctl", "--if-exists", "del-br", name], capture_output=True)
        if self._ovs_config:
            from mptcp_lb.datapath import restore_other_config

            restore_other_config(self._ovs_config)
            self._ovs_config = {}
        try:
            self.stop_controller()
        finally:
            if self.pki is not None:
                self.pki.stop_using_for_ovs()
                self.pki = None
            try:
                from ryu_app.health import ProbeRoutes

                ProbeRoutes(mgmt_interface(self.prefix)).clear()  # what a killed controller left
            except Exception:
                log.exception("removing probe routes")

    def stop_controller(self, kill: bool = False) -> None:
        """Stop the controller: SIGTERM (it cleans up), or with ``kill`` SIGKILL (a crash).

        A controller still running 10 s after SIGTERM is killed, and RuntimeError says so: a bug.
        """
        if self.controller is not None and self.controller.poll() is None:
            os.killpg(self.controller.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.controller.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.controller.pid, signal.SIGKILL)
                self.controller.wait()
                self.controller = None
                raise RuntimeError("the controller ignored SIGTERM for 10 s (systemd would kill it too)")
        self.controller = None

    # ------------------------------------------------------------ use

    def api(self, method: str, path: str, body=None, headers: dict | None = None):
        """A REST API call with the controller's token; the JSON reply, or {"status": code, "error": ...}."""
        port = self.config["controller"]["api_port"]
        data = json.dumps(body).encode() if body is not None else None
        with open(self.token_file) as f:
            token = f.read().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return {"status": e.code, **json.loads(e.read() or b"{}")}

    def metrics(self, path: str = "/metrics") -> str:
        """What the controller's metrics listener (no token) answers for ``path``."""
        port = self.config["controller"]["metrics_port"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()

    def mux_flow_counts(self) -> dict[str, int]:
        """Flows on each MUX bridge (but those ``fail_mux`` took away)."""
        return {f"mux{i}": ofctl_flow_count(self.mux_bridge(i)) for i in (1, 2) if i not in self.failed_muxes}

    def run_traffic(self, conns: int, size: int, min_subflows: int = 3, parallel: int = 4,
                    timeout: float = 20.0, source_port: int = 0, client: str = "c1", rate: float = 0,
                    ipv6: bool = False) -> list[dict]:
        """Run real kernel MPTCP connections from a client; return per-connection results.

        ``c1`` follows ADD_ADDR (port-based steering); ``c2`` joins the service port (token-based).
        ``rate`` (bytes/s) paces each upload: the sender is limited, so data is in flight throughout.
        ``ipv6`` connects to ``VIP6`` (a Datacenter built with ``ipv6=True``).
        """
        return self.start_traffic(conns, size, min_subflows, parallel, timeout, source_port, client, rate,
                                  ipv6).results()

    def start_traffic(self, conns: int, size: int, min_subflows: int = 3, parallel: int = 4,
                      timeout: float = 20.0, source_port: int = 0, client: str = "c1",
                      rate: float = 0, ipv6: bool = False) -> TrafficRun:
        """``run_traffic`` in the background: returns at once; ``.results()`` waits for them.

        For scenarios: start rate-limited uploads, make something happen while
        they are in flight, then judge them.
        """
        if ipv6 and not self.ipv6:
            raise ValueError("ipv6 traffic needs a Datacenter built with ipv6=True")
        cmd = [sys.executable, "-m", "mptcp_lb.traffic", "--vip", VIP6 if ipv6 else VIP, "--port", str(SERVICE_PORT),
               "--conns", str(conns), "--size", str(size), "--min-subflows", str(min_subflows),
               "--parallel", str(parallel), "--timeout", str(timeout),
               "--source-port", str(source_port), "--rate", str(rate)]
        proc = self.host(client).popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        duration = size / rate if rate else 0
        return TrafficRun(proc, conns * (timeout + duration) / max(1, min(parallel, conns)) + 120)

    # ------------------------------------------------------------ scenarios

    def nstat(self, host: str) -> dict[str, int]:
        """A host's kernel counters (nstat -a), by name: TcpEstabResets, TcpOutRsts, MPTcpExt..."""
        return json.loads(self.host(host).cmd("nstat -asz --json"))["kernel"]

    def dip_stats(self, i: int) -> dict[str, int]:
        """DIP i's program counters (``mptcp-lb dip-stats``): keys adopted, pool fallbacks, flow map use..."""
        out = self.dip_host(i).cmd(f"{sys.executable} -m mptcp_lb.cli dip-stats {self.prefix}d{i}-eth0")
        return json.loads(out)

    def established(self, dip: int) -> int:
        """TCP sockets (subflows) established on a DIP's VIP service port."""
        out = self.dip_host(dip).cmd(f"ss -tnH state established '( sport = :{SERVICE_PORT} )'")
        return len([line for line in out.splitlines() if line.strip()])

    def set_dip_link(self, i: int, up: bool) -> None:
        """Take a DIP's fabric link down (a crashed or unplugged host) or back up."""
        self.dip_host(i).cmd(f"ip link set {self.prefix}d{i}-eth0 {'up' if up else 'down'}")

    def kill_agent(self, i: int) -> None:
        """SIGKILL a DIP's agent, and with it the echo service: the service dies, the host stays set up."""
        proc = self.agents.pop(i, None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def kill_controller(self) -> None:
        """SIGKILL the controller, as a crash would: no cleanup, the MUXes keep their flows."""
        self.stop_controller(kill=True)

    def narrow_client_path(self, mtu: int | None, client: str = "c1") -> None:
        """Give the router's links to a client a smaller MTU (None: back to 1500) that the client's MSS does not show.

        DIPs then send that client packets the router cannot forward; only the
        router's ICMP "fragmentation needed", sent to the VIP, tells them, so
        this is how a scenario proves path MTU discovery through the MUXes.
        The DIPs' learned path MTUs are flushed when the path is put back.
        """
        host = self.host(client)
        host.set_path_mtu(mtu)
        self.router.set_client_link_mtu(host, mtu or 1500)
        if mtu is None:
            for i in self.dip_ids():
                self.dip_host(i).cmd("ip route flush cache")

    def set_vip_route(self, only_mux: int | None = None) -> None:
        """The border router's ECMP route for the VIP over both MUXes, or over one (the other withdrawn)."""
        if self.bgp:
            raise RuntimeError("with bgp=True the router's VIP route is BGP's: fail_mux() takes a MUX out")
        self.router.set_vip_route(only_mux)


class TestPki:
    """A throwaway OpenFlow PKI made with ``ovs-pki``: a controller and a switch certificate, each from its CA.

    OVS's SSL settings are the whole ovsdb's: ``use_for_ovs`` sets them for
    every bridge, ``stop_using_for_ovs`` puts back what was there.
    """

    __test__ = False  # not a pytest class

    def __init__(self, directory: str):
        self.dir = directory
        self._previous: list[str] | None = None

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def create(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        subprocess.run(["ovs-pki", f"--dir={self.dir}/ca", "--force", "init"], check=True, capture_output=True)
        for name, kind in (("ctl", "controller"), ("sw", "switch")):
            subprocess.run(["ovs-pki", f"--dir={self.dir}/ca", "--force", "req+sign", name, kind], check=True,
                           capture_output=True, cwd=self.dir)

    def controller_settings(self) -> dict:
        return {"privkey": self._file("ctl-privkey.pem"), "cert": self._file("ctl-cert.pem"),
                "ca_cert": self._file("ca/switchca/cacert.pem")}

    def switch_files(self) -> tuple[str, str]:
        """(private key, certificate) of the switch: what a switch of this PKI presents."""
        return self._file("sw-privkey.pem"), self._file("sw-cert.pem")

    def switch_cert_sha256(self) -> str:
        import hashlib
        import ssl

        with open(self._file("sw-cert.pem")) as f:
            text = f.read()  # ovs-pki puts the certificate's text form before the PEM block
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----"):])).hexdigest()

    def use_for_ovs(self) -> None:
        current = subprocess.run(["ovs-vsctl", "get-ssl"], capture_output=True, text=True).stdout
        self._previous = [line.split(": ", 1)[1].strip() for line in current.splitlines()
                          if line.startswith(("Private key", "Certificate", "CA Certificate"))]
        key, cert = self.switch_files()
        subprocess.run(["ovs-vsctl", "set-ssl", key, cert, self._file("ca/controllerca/cacert.pem")], check=True)

    def stop_using_for_ovs(self) -> None:
        if self._previous and len(self._previous) == 3:
            subprocess.run(["ovs-vsctl", "set-ssl", *self._previous], capture_output=True)
        else:
            subprocess.run(["ovs-vsctl", "del-ssl"], capture_output=True)


class TrafficRun:
    """Connections running in the background (``Datacenter.start_traffic``)."""

    def __init__(self, proc: subprocess.Popen, timeout: float):
        self.proc = proc
        self.timeout = timeout

    def results(self) -> list[dict]:
        """Wait for every connection; one result each, in start order (see ``mptcp_lb.traffic``)."""
        out, err = self.proc.communicate(timeout=self.timeout)
        try:  # exit 1 means "some connection failed": the results still say which
            return json.loads(out)
        except ValueError:
            raise RuntimeError(f"traffic generator failed ({self.proc.returncode}): {err[-2000:]}") from None
