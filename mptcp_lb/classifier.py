"""The MUX classifier (bpf/mux_classifier.c) and the tap that puts it in front of OVS.

OVS's afxdp ports replace any XDP program on their interface, and its
AF_PACKET ports read frames before tc ingress runs, so the classifier cannot
sit on an OVS port. It sits on the MUX's uplink instead, and the uplink
leaves the bridge: a veth pair (the *tap*) takes its place, its far end
becoming the OVS port with the uplink's OpenFlow port number, so the
controller's flows do not change::

    router -- uplink --(mux_uplink_xdp or _ingress: tag, redirect)--> mlbN-tap ==veth== mlbN-ovs: OVS port
    router <- uplink <-(mux_to_uplink: redirect)---------------------- mlbN-tap <=veth== mlbN-ovs

``N`` is the uplink's ifindex. Where the OVS end is an afxdp port running
its XDP program in native mode, the classifier runs in native XDP on the
uplink and redirects each frame into the tap as it came, with no skb on
the way through the MUX (the ``xdp`` hook); otherwise, or where the uplink's driver has no
native XDP, at tc ingress (the ``tc`` hook: a veth only takes an XDP
redirect when its far end runs XDP natively (or has GRO on), and an
AF_PACKET port runs no XDP).
``insert`` builds this and ``remove`` puts the uplink back as it was.
``load`` and ``ClassifierObject.configure`` are the same steps without
touching an interface (load separate from attach), for tests and
benchmarks that run the programs with BPF_PROG_TEST_RUN.

The uplink's GRO is turned off while the tap is in place (and restored on
remove): at tc, a GRO super-frame would be redirected whole, and a veth
drops one that does not fit a page on its way to OVS's XDP program.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, replace
from functools import cache

from pyroute2 import Ethtool, IPRoute

from mptcp_lb import bpf, tc, xdp
from mptcp_lb.datapath import XDP_PORT_TYPES, port_options, resolve_port_type

log = logging.getLogger(__name__)

CLASSIFIER_OBJECT = bpf.BPF_DIR / "mux_classifier.o"
UPLINK_PROGRAM = "mux_uplink_ingress"  # the tc hook's
UPLINK_XDP_PROGRAM = "mux_uplink_xdp"  # the xdp hook's
# hook -> (uplink program, what it returns for a frame it hands to OVS, and for one it cannot deliver)
UPLINK_PROGRAMS = {"xdp": (UPLINK_XDP_PROGRAM, bpf.XDP_REDIRECT, bpf.XDP_DROP),
                   "tc": (UPLINK_PROGRAM, bpf.TC_ACT_REDIRECT, bpf.TC_ACT_SHOT)}
HOOKS = tuple(UPLINK_PROGRAMS)
OVS_XDP_WAIT = 5.0  # seconds an afxdp OVS port may take to show its XDP program after it is added
RETURN_PROGRAM = "mux_to_uplink"
# The ABI of bpf/mux_maps.h; tests/unit/test_bpf_abi.py checks it against the header and the object's BTF.
# enum mux_stat, in order: the keys of mux_stats.
STAT_NAMES = ("to_ovs", "mp_capable", "mp_join", "timestamp", "to_uplink", "unconfigured", "over_budget",
              "carrier_cleared", "forged_tag")
MUX_PORTS = bpf.StructLayout("mux_ports", [("to_ovs", "I"), ("to_uplink", "I")])
PUNT_KEY = bpf.StructLayout("punt_key", [("vip", "4s"), ("port", "2s"), ("reserved", "H")])
PUNT_BUDGET = bpf.StructLayout("punt_budget", [("interval_ns", "Q"), ("burst_ns", "Q"), ("tat", "Q"), ("lock", "I"),
                                               ("reserved", "I")])


def punt_budgets(config) -> dict[tuple[str, int], tuple[int, int]]:
    """(VIP address, port) -> (SYN + MP_CAPABLE per second, burst) for the config's seed-mode VIPs."""
    return {(v.address, v.port): (v.punt_rate or config.controller.punt_rate,) * 2
            for v in config.vips if v.uses_tokens and v.key_source == "seed"}
_U32 = struct.Struct("=I")
_GRO = "rx-gro"
_ALIAS_PREFIX = "mptcp-lb classifier tap:"


class ClassifierError(RuntimeError):
    """The tap could not be built or removed; the message names the interface or bridge."""


def tap_names(uplink_ifindex: int) -> tuple[str, str]:
    """(near end, OVS end) of the tap pair for the uplink with this ifindex."""
    return f"mlb{uplink_ifindex}-tap", f"mlb{uplink_ifindex}-ovs"


# ------------------------------------------------------------------ the BPF object


class ClassifierObject:
    """``bpf/mux_classifier.o`` loaded into the kernel, not attached anywhere."""

    def __init__(self):
        self.obj = bpf.BpfObject(bpf.built_object(CLASSIFIER_OBJECT.name))

    def prog_fd(self, name: str) -> int:
        return self.obj.prog_fd(name)

    def set_punt_budgets(self, budgets: dict[tuple[str, int], tuple[int, int]]) -> None:
        """Each seed-mode VIP's budget: (address, port) -> (SYN + MP_CAPABLE punted per second, burst).

        Over it, such a SYN goes untagged to the VIP's hash (a DIP's pool
        key) instead of to the controller: never dropped for the budget.
        """
        budget_map = self.obj.map("mux_punt_budget")
        for (vip, port), (rate, burst) in budgets.items():
            if not 1 <= rate <= 10**9 or not 1 <= burst <= 10**6:
                raise ValueError(f"punt budget for {vip}:{port}: rate {rate}/s and burst {burst} out of range")
            interval = 10**9 // rate
            key = PUNT_KEY.pack(ipaddress.IPv4Address(vip).packed, port.to_bytes(2, "big"), 0)
            budget_map.update(key, PUNT_BUDGET.pack(interval, interval * (burst - 1), 0, 0, 0))

    def configure(self, to_ovs: int, to_uplink: int) -> None:
        """Where the programs redirect frames: ifindexes of the tap's near end and of the uplink."""
        self.obj.map("mux_ports").update(_U32.pack(0), MUX_PORTS.pack(to_ovs, to_uplink))

    def stats(self) -> dict[str, int]:
        return bpf.read_counters(self.obj.map("mux_stats"), STAT_NAMES)

    def close(self) -> None:
        """Unload what is not attached; attached programs stay, with their maps."""
        self.obj.close()

    def __enter__(self) -> ClassifierObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load() -> ClassifierObject:
    return ClassifierObject()


@cache
def _loaded() -> ClassifierObject:
    """One configured copy for the process: loading runs the verifier, which costs milliseconds."""
    obj = load()
    obj.configure(to_ovs=1, to_uplink=1)  # test runs never really redirect
    return obj


def classify_bytes(frame: bytes, hook: str = "tc") -> bytes:
    """The frame as the classifier on ``hook`` hands it to OVS, run once in the kernel (BPF_PROG_TEST_RUN).

    The kernel refuses (EINVAL) frames shorter than an Ethernet header, and
    at tc IPv4 or IPv6 frames shorter than their IP header.
    """
    program, redirect, _ = UPLINK_PROGRAMS[hook]
    run = bpf.test_run(_loaded().prog_fd(program), frame)
    if run.retval != redirect:
        raise RuntimeError(f"classifier at {hook} returned {run.retval}, not a redirect, for {frame.hex()}")
    return run.data_out


# ------------------------------------------------------------------ OVS ports


def _vsctl(*args: str) -> str:
    proc = subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True)
    if proc.returncode:
        raise ClassifierError(f"ovs-vsctl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _ofport(port: str) -> int | None:
    proc = subprocess.run(["ovs-vsctl", "--timeout=10", "get", "Interface", port, "ofport"],
                          capture_output=True, text=True)
    if proc.returncode:
        return None
    value = proc.stdout.strip()
    return int(value) if value.lstrip("-").isdigit() and int(value) > 0 else None


def _bridge_of(port: str) -> str | None:
    proc = subprocess.run(["ovs-vsctl", "--timeout=10", "port-to-br", port], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _swap_port(bridge: str, old: str | None, new: str | None, ofport: int, port_type: str) -> None:
    """Replace port ``old`` of the bridge (if there) by ``new`` at the same OpenFlow port, in one transaction."""
    cmd = ["--if-exists", "del-port", bridge, old] if old else []
    if new is not None and _bridge_of(new) != bridge:
        cmd += ["--", "add-port", bridge, new, "--", "set", "Interface", new, f"ofport_request={ofport}",
                *port_options(port_type)]
    if cmd:
        _vsctl(*(cmd[1:] if cmd[0] == "--" else cmd))
    if new is not None:
        _vsctl("wait-until", "Interface", new, f"ofport={ofport}")


# ------------------------------------------------------------------ insert / remove


@dataclass(frozen=True)
class Tap:
    """A classifier tap in place, and what ``remove`` needs to put things back as they were.

    It is written into the near end's interface alias, so a later process
    (the CLI's ``detach``) finds it there.
    """

    bridge: str
    uplink: str
    ofport: int
    port_type: str
    uplink_was_port: bool  # False: the uplink was no port of the bridge before, and stays none
    gro_was: bool  # the uplink's GRO before the tap turned it off
    own_clsact: bool = False  # the uplink's clsact qdisc is ours (created by insert), not shared
    hook: str = "tc"  # where the uplink's program runs: "xdp" (native) or "tc" (ingress)

    @property
    def near(self) -> str:
        return tap_names(_ifindex(self.uplink))[0]

    @property
    def ovs_end(self) -> str:
        return tap_names(_ifindex(self.uplink))[1]

    def alias(self) -> str:
        return (f"{_ALIAS_PREFIX} uplink={self.uplink} bridge={self.bridge} ofport={self.ofport} "
                f"type={self.port_type} was_port={int(self.uplink_was_port)} gro={int(self.gro_was)} "
                f"clsact={int(self.own_clsact)} hook={self.hook}")

    @classmethod
    def from_alias(cls, alias: str) -> Tap:
        if not alias.startswith(_ALIAS_PREFIX):
            raise ClassifierError(f"interface alias {alias!r} is not a classifier tap's")
        try:
            f = dict(item.split("=", 1) for item in alias[len(_ALIAS_PREFIX):].split())
            tap = cls(f["bridge"], f["uplink"], int(f["ofport"]), f["type"], f["was_port"] == "1", f["gro"] == "1",
                      f["clsact"] == "1", f.get("hook", "tc"))
            if tap.hook not in HOOKS:
                raise ValueError(tap.hook)
            return tap
        except (KeyError, ValueError):
            raise ClassifierError(f"interface alias {alias!r} does not describe a classifier tap") from None


def _ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise ClassifierError(f"interface {ifname} does not exist") from None


def _set_gro(ifname: str, on: bool) -> bool:
    """Set GRO on the interface; return whether it was on before."""
    ethtool = Ethtool()
    try:
        features = ethtool.get_features(ifname)
        if _GRO not in features.features:
            raise ClassifierError(f"interface {ifname} reports no {_GRO} feature to turn off")
        was = features.features[_GRO].enable
        if was != on:
            features.features[_GRO].enable = on
            ethtool.set_features(ifname, features)
    finally:
        ethtool.close()
    return was


def insert(bridge: str, uplink: str, port_type: str | None = None, ofport: int | None = None,
           budgets: dict[tuple[str, int], tuple[int, int]] | None = None, hook: str | None = None) -> Tap:
    """Put the classifier between ``uplink`` and OVS bridge ``bridge``; undo what was done if a step fails.

    The uplink is usually a port of the bridge already, and the tap's OVS end
    takes its OpenFlow port number and port type; otherwise ``ofport`` says
    which number to use, and ``port_type`` defaults to the host's default.
    ``budgets`` are the seed-mode VIPs' punt budgets (``punt_budgets``).
    ``hook`` None or "tc" runs the uplink program at tc ingress; "xdp" in
    native XDP where it can (an afxdp OVS end), else at tc. tc is the
    default: it works before every port type, and XDP measured no better on
    this test bed (README).
    """
    if hook not in (None, "tc", "xdp"):
        raise ValueError(f"classifier hook {hook!r}: 'tc' (the default) or 'xdp'")
    uplink_ifindex = _ifindex(uplink)
    near, ovs_end = tap_names(uplink_ifindex)
    if os.path.exists(f"/sys/class/net/{near}"):
        raise ClassifierError(f"uplink {uplink} already has a classifier tap ({near}): remove it first")
    current = _bridge_of(uplink)
    if current not in (None, bridge):
        raise ClassifierError(f"uplink {uplink} is a port of bridge {current}, not {bridge}")
    if ofport is None:
        ofport = _ofport(uplink) if current == bridge else None
        if ofport is None:
            raise ClassifierError(f"uplink {uplink} is not a port of bridge {bridge}: give its OpenFlow port")
    if port_type is None and current == bridge:  # the tap's end takes the uplink's place, as the same kind of port
        port_type = _vsctl("get", "Interface", uplink, "type").strip('"') or "system"
    port_type = resolve_port_type(port_type)
    tap = Tap(bridge, uplink, ofport, port_type, uplink_was_port=current == bridge,
              gro_was=_set_gro(uplink, False))
    done: list[str] = []  # the steps taken, for the rollback
    with IPRoute() as ipr:
        try:
            mtu = ipr.get_links(uplink_ifindex)[0].get_attr("IFLA_MTU")
            ipr.link("add", ifname=near, kind="veth", peer={"ifname": ovs_end, "mtu": mtu}, mtu=mtu,
                     ifalias=tap.alias())
            done.append("tap")
            near_ifindex = ipr.link_lookup(ifname=near)[0]
            for name in (near, ovs_end):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            with load() as obj:
                obj.configure(to_ovs=near_ifindex, to_uplink=uplink_ifindex)
                obj.set_punt_budgets(budgets or {})
                tc.add_clsact(ipr, near_ifindex)
                tc.attach(ipr, near_ifindex, near, tc.INGRESS, obj.prog_fd(RETURN_PROGRAM), RETURN_PROGRAM)
                done.append("port")
                _swap_port(bridge, uplink if current else None, ovs_end, ofport, port_type)
                tap = replace(tap, hook=_uplink_hook(ipr, ovs_end, port_type) if hook == "xdp" else "tc")
                done.append("classifier")
                if tap.hook == "xdp":
                    ipr.link("set", index=near_ifindex, ifalias=tap.alias())
                    try:
                        xdp.attach(ipr, uplink_ifindex, uplink, obj.prog_fd(UPLINK_XDP_PROGRAM), UPLINK_XDP_PROGRAM)
                    except RuntimeError as e:  # no native XDP in the uplink's driver, or another program there
                        log.warning("%s: the classifier runs at tc ingress of %s instead", e, uplink)
                        tap = replace(tap, hook="tc")
                if tap.hook == "tc":
                    tap = replace(tap, own_clsact=tc.add_clsact(ipr, uplink_ifindex))
                    ipr.link("set", index=near_ifindex, ifalias=tap.alias())
                    tc.attach(ipr, uplink_ifindex, uplink, tc.INGRESS, obj.prog_fd(UPLINK_PROGRAM), UPLINK_PROGRAM)
        except BaseException:
            log.exception("inserting the classifier on %s failed; putting things back", uplink)
            try:
                _undo(ipr, tap, uplink_ifindex, done)
            except ClassifierError:
                log.exception("putting %s back failed too", uplink)  # the first failure is the one raised
            raise
    log.info("classifier on %s (%s): frames to OVS port %d of %s through %s (%s)", uplink, tap.hook, ofport, bridge,
             ovs_end, port_type)
    return tap


def _uplink_hook(ipr: IPRoute, ovs_end: str, port_type: str) -> str:
    """"xdp" when the tap's OVS end runs XDP in native mode (an afxdp port), else "tc".

    An XDP redirect into a veth is dropped unless its far end runs XDP in
    native mode; OVS attaches its program when it opens the port, so this
    waits up to OVS_XDP_WAIT for it.
    """
    if port_type not in XDP_PORT_TYPES:
        return "tc"
    index = ipr.link_lookup(ifname=ovs_end)[0]
    deadline = time.monotonic() + OVS_XDP_WAIT
    while (mode := xdp.attached(ipr, index)[0]) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if mode != xdp.NATIVE:
        log.warning("OVS port %s (%s) runs %s, not native XDP: an XDP redirect into it would be dropped, so the "
                    "classifier runs at tc ingress", ovs_end, port_type, mode or "no XDP program")
        return "tc"
    return "xdp"


def remove(bridge: str, uplink: str) -> Tap:
    """Take the classifier and its tap away and put the uplink back as it was; return what was removed.

    Nothing changes until the uplink is back in the bridge: if OVS refuses,
    the tap stays in place and working, and a second try can finish. If the
    bridge is gone, there is nothing to put back: the tap and classifier go.
    """
    uplink_ifindex = _ifindex(uplink)
    near = tap_names(uplink_ifindex)[0]
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=near)
        if not links:
            raise ClassifierError(f"uplink {uplink} has no classifier tap ({near})")
        tap = Tap.from_alias(ipr.get_links(links[0])[0].get_attr("IFLA_IFALIAS") or "")
        if tap.bridge != bridge:
            raise ClassifierError(f"the classifier tap of {uplink} stands in for a port of bridge {tap.bridge}, "
                                  f"not {bridge}")
        exists = subprocess.run(["ovs-vsctl", "--timeout=10", "br-exists", bridge], capture_output=True, text=True)
        if exists.returncode not in (0, 2):  # 2: no such bridge; anything else: OVS did not answer
            raise ClassifierError(f"ovs-vsctl br-exists {bridge}: {exists.stderr.strip() or exists.returncode}")
        _undo(ipr, tap, uplink_ifindex, ["tap", "port", "classifier"] if exists.returncode == 0 else ["tap", "classifier"])
    log.info("classifier removed from %s%s", uplink,
             f"; it is OVS port {tap.ofport} of {bridge} again" if tap.uplink_was_port else "")
    return tap


def _undo(ipr: IPRoute, tap: Tap, uplink_ifindex: int, done: list[str]) -> None:
    """Undo the steps ``insert`` took (named in ``done``), the port swap first: when OVS refuses it, stop there."""
    if "port" in done:
        _swap_port(tap.bridge, tap.ovs_end, tap.uplink if tap.uplink_was_port else None, tap.ofport, tap.port_type)
    errors = []

    def attempt(what, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as e:  # keep going: a half-removed tap is worse than one error
            log.warning("%s: %s", what, e)
            errors.append(f"{what}: {e}")

    if "classifier" in done and tap.hook == "xdp":
        attempt(f"detaching the classifier from {tap.uplink}", xdp.detach, ipr, uplink_ifindex, UPLINK_XDP_PROGRAM)
    elif "classifier" in done:
        attempt(f"detaching the classifier from {tap.uplink}",
                tc.del_clsact if tap.own_clsact else lambda i, x: tc.detach(i, x, tc.INGRESS), ipr, uplink_ifindex)
    links = ipr.link_lookup(ifname=tap.near)
    if "tap" in done and links:
        attempt(f"deleting {tap.near}", ipr.link, "del", index=links[0])
    attempt(f"restoring GRO on {tap.uplink}", _set_gro, tap.uplink, tap.gro_was)
    if errors:
        raise ClassifierError("; ".join(errors))


def stats(uplink: str) -> dict[str, int]:
    """The counters of the classifier attached to ``uplink`` (in XDP or at tc), read through its maps.

    An XDP program on the uplink that is not the classifier's (OVS's, when
    the uplink is an afxdp port; someone's firewall) is not read.
    """
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=uplink)
            prog_id = xdp.attached_named(ipr, found[0], UPLINK_XDP_PROGRAM) if found else None
        if prog_id is not None:
            return bpf.program_counters(prog_id, "mux_stats", STAT_NAMES, uplink)
        return tc.attached_counters(uplink, tc.INGRESS, "mux_stats", STAT_NAMES)
    except LookupError as e:
        raise ClassifierError(f"no classifier is attached to {uplink} ({e})") from e
