"""The MUX classifier (bpf/mux_classifier.c) and the tap that puts it in front of OVS.

OVS's afxdp ports replace any XDP program on their interface, and its
AF_PACKET ports read frames before tc ingress runs, so the classifier cannot
sit on an OVS port. It sits at tc ingress of the MUX's uplink instead, and
the uplink leaves the bridge: a veth pair (the *tap*) takes its place, its far
end becoming the OVS port with the uplink's OpenFlow port number, so the
controller's flows do not change::

    router -- uplink --(mux_uplink_ingress: tag, redirect)--> mlbN-tap ==veth== mlbN-ovs: OVS port
    router <- uplink <-(mux_to_uplink: redirect)------------- mlbN-tap <=veth== mlbN-ovs

``N`` is the uplink's ifindex. ``insert`` builds this and ``remove`` puts the
uplink back as it was. ``load`` and ``ClassifierObject.configure`` are the
same steps without touching an interface (load separate from attach), for
tests and benchmarks that run the programs with BPF_PROG_TEST_RUN.

The uplink's GRO is turned off while the tap is in place (and restored on
remove): OVS's XDP program takes one frame at a time, and a veth drops a
GRO super-frame that does not fit a page on its way there.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
from dataclasses import dataclass
from functools import cache

from pyroute2 import Ethtool, IPRoute

from mptcp_lb import bpf, tc
from mptcp_lb.datapath import port_options, resolve_port_type

log = logging.getLogger(__name__)

CLASSIFIER_OBJECT = bpf.BPF_DIR / "mux_classifier.o"
UPLINK_PROGRAM = "mux_uplink_ingress"
RETURN_PROGRAM = "mux_to_uplink"
# enum mux_stat in bpf/mux_classifier.c, in order.
STAT_NAMES = ("to_ovs", "mp_capable", "mp_join", "timestamp", "to_uplink", "unconfigured")
_PORTS = struct.Struct("=II")  # struct mux_ports: to_ovs, to_uplink
_U32 = struct.Struct("=I")
_GRO = "rx-gro"
_ALIAS = "mptcp-lb classifier tap of {uplink}; uplink gro was {gro}"


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

    def configure(self, to_ovs: int, to_uplink: int) -> None:
        """Where the programs redirect frames: ifindexes of the tap's near end and of the uplink."""
        self.obj.map("mux_ports").update(_U32.pack(0), _PORTS.pack(to_ovs, to_uplink))

    def stats(self) -> dict[str, int]:
        return _read_stats(self.obj.map("mux_stats"))

    def close(self) -> None:
        """Unload what is not attached; attached programs stay, with their maps."""
        self.obj.close()

    def __enter__(self) -> ClassifierObject:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load() -> ClassifierObject:
    return ClassifierObject()


def _read_stats(stats_map: bpf.BpfMap) -> dict[str, int]:
    out = {}
    for i, name in enumerate(STAT_NAMES):
        raw = stats_map.lookup(_U32.pack(i)) or b""
        out[name] = sum(struct.unpack(f"={len(raw) // 8}Q", raw))
    return out


@cache
def _loaded() -> ClassifierObject:
    """One configured copy for the process: loading runs the verifier, which costs milliseconds."""
    obj = load()
    obj.configure(to_ovs=1, to_uplink=1)  # test runs never really redirect
    return obj


def classify_bytes(frame: bytes) -> bytes:
    """The frame as the classifier hands it to OVS, run once in the kernel (BPF_PROG_TEST_RUN).

    The kernel refuses frames shorter than an Ethernet header (14 bytes) with EINVAL.
    """
    run = bpf.test_run(_loaded().prog_fd(UPLINK_PROGRAM), frame)
    if run.retval != bpf.TC_ACT_REDIRECT:
        raise RuntimeError(f"classifier returned {run.retval}, not TC_ACT_REDIRECT, for {frame.hex()}")
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
    """A classifier tap in place: the uplink, the pair's two ends and the OVS port they stand for."""

    bridge: str
    uplink: str
    near: str
    ovs_end: str
    ofport: int
    port_type: str
    uplink_was_port: bool = True  # remove() makes the uplink the OVS port again


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
        was = features.features[_GRO].enable
        if was != on:
            features.features[_GRO].enable = on
            ethtool.set_features(ifname, features)
    finally:
        ethtool.close()
    return was


def insert(bridge: str, uplink: str, port_type: str | None = None, ofport: int | None = None) -> Tap:
    """Put the classifier between ``uplink`` and OVS bridge ``bridge``; undo what was done if a step fails.

    The uplink is usually a port of the bridge already, and the tap's OVS end
    takes its OpenFlow port number and port type; otherwise ``ofport`` says
    which number to use, and ``port_type`` defaults to the host's default.
    """
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
    tap = Tap(bridge, uplink, near, ovs_end, ofport, port_type, uplink_was_port=current == bridge)
    with IPRoute() as ipr:
        mtu = ipr.get_links(uplink_ifindex)[0].get_attr("IFLA_MTU")
        gro_was = _set_gro(uplink, False)
        try:
            ipr.link("add", ifname=near, kind="veth", peer={"ifname": ovs_end, "mtu": mtu}, mtu=mtu,
                     ifalias=_ALIAS.format(uplink=uplink, gro="on" if gro_was else "off"))
            near_ifindex = ipr.link_lookup(ifname=near)[0]
            for name in (near, ovs_end):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            with load() as obj:
                obj.configure(to_ovs=near_ifindex, to_uplink=uplink_ifindex)
                tc.add_clsact(ipr, near_ifindex)
                tc.attach(ipr, near_ifindex, near, tc.INGRESS, obj.prog_fd(RETURN_PROGRAM), RETURN_PROGRAM)
                _swap_port(bridge, uplink if current else None, ovs_end, ofport, port_type)
                tc.add_clsact(ipr, uplink_ifindex)
                tc.attach(ipr, uplink_ifindex, uplink, tc.INGRESS, obj.prog_fd(UPLINK_PROGRAM), UPLINK_PROGRAM)
        except BaseException:
            log.exception("inserting the classifier on %s failed; putting %s back", uplink, uplink)
            _remove(ipr, tap, uplink_ifindex, gro_was)
            raise
    log.info("classifier on %s: frames to OVS port %d of %s through %s (%s)", uplink, ofport, bridge, ovs_end,
             port_type)
    return tap


def remove(bridge: str, uplink: str, port_type: str | None = None) -> None:
    """Take the classifier and its tap away and make ``uplink`` the OVS port again, as it was."""
    uplink_ifindex = _ifindex(uplink)
    near, ovs_end = tap_names(uplink_ifindex)
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=near)
        if not links:
            raise ClassifierError(f"uplink {uplink} has no classifier tap ({near})")
        alias = ipr.get_links(links[0])[0].get_attr("IFLA_IFALIAS") or ""
        ofport = _ofport(ovs_end)
        if port_type is None:  # the uplink goes back as the kind of port its stand-in was
            proc = subprocess.run(["ovs-vsctl", "--timeout=10", "get", "Interface", ovs_end, "type"],
                                  capture_output=True, text=True)
            port_type = proc.stdout.strip().strip('"') or "system"
        tap = Tap(bridge, uplink, near, ovs_end, ofport or 0, port_type)
        _remove(ipr, tap, uplink_ifindex, gro_was=alias.endswith("gro was on"))
    log.info("classifier removed from %s; it is OVS port %s of %s again", uplink, ofport, bridge)


def _remove(ipr: IPRoute, tap: Tap, uplink_ifindex: int, gro_was: bool) -> None:
    """Every step of taking the tap away, each tried even when an earlier one fails."""
    errors = []

    def attempt(what, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as e:  # keep going: a half-removed tap is worse than one error
            log.warning("%s: %s", what, e)
            errors.append(f"{what}: {e}")

    attempt(f"detaching the classifier from {tap.uplink}", tc.del_clsact, ipr, uplink_ifindex)
    attempt(f"putting {tap.uplink} back on {tap.bridge}" if tap.uplink_was_port else f"removing {tap.ovs_end}",
            _swap_port, tap.bridge, tap.ovs_end, tap.uplink if tap.uplink_was_port and tap.ofport else None,
            tap.ofport, tap.port_type)
    links = ipr.link_lookup(ifname=tap.near)
    if links:
        attempt(f"deleting {tap.near}", ipr.link, "del", index=links[0])
    attempt(f"restoring GRO on {tap.uplink}", _set_gro, tap.uplink, gro_was)
    if errors:
        raise ClassifierError("; ".join(errors))


def stats(uplink: str) -> dict[str, int]:
    """The counters of the classifier attached to ``uplink``, read through the attached program's maps."""
    uplink_ifindex = _ifindex(uplink)
    with IPRoute() as ipr:
        prog_id = tc.attached_prog_id(ipr, uplink_ifindex, tc.INGRESS)
    if prog_id is None:
        raise ClassifierError(f"no classifier is attached to {uplink}")
    maps = bpf.program_maps(prog_id)
    try:
        return _read_stats(maps["mux_stats"])
    finally:
        for m in maps.values():
            m.close()
