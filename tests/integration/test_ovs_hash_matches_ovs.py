"""ovs_flows.ovs_hash against the real Open vSwitch.

A throw-away netdev bridge gets the production pipeline

    table=0, tcp, actions=multipath(symmetric_l4,0,hrw,N,0,NXM_NX_REG0[0..15]),
                          resubmit(,1)
    table=1, reg0=i, actions=load:i+1->NXM_NX_REG1[]     (i < N)

and ``ovs-appctl ofproto/trace`` (the same xlate code an upcall runs) tells
which bucket OVS chose for random TCP 5-tuples with random MACs; Python must
agree on every one.  The trace shows the choice twice: the value multipath
wrote to reg0 and the table-1 flow that matched; both are checked.

The raw 32-bit field hash is also read out of OVS, with
``multipath(...,modulo_n,65536,...)`` (low 16 bits) and
``multipath(...,hash_threshold,65536,...)`` (high 16 bits).
"""

from __future__ import annotations

import random
import re
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from ovs_flows.ovs_hash import (
    infer_hash_impl,
    multipath_link,
    pick_backend,
    symmetric_l3l4_hash,
    symmetric_l4_hash,
)

pytestmark = pytest.mark.integration

N_SAMPLES = 500
SEED = 0x5EED


def _run(*cmd: str) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}")
    return res.stdout


_NOW = re.compile(r"-> NXM_NX_REG(\d+)(\[[0-9.]*\])? is now (0x[0-9a-f]+|\d+)")
_T1 = re.compile(r"^\s*1\. reg0=(0x[0-9a-f]+|\d+)\b", re.M)
_FINAL_REG1 = re.compile(r"^Final flow: .*\breg1=(0x[0-9a-f]+|\d+)\b", re.M)


class Tracer:
    """A netdev bridge whose table 0 can be swapped; traces run in parallel."""

    def __init__(self):
        self.br = f"mph{uuid.uuid4().hex[:8]}"

    def __enter__(self):
        _run("ovs-vsctl", "--timeout=10", "add-br", self.br, "--", "set", "bridge",
             self.br, "datapath_type=netdev", "fail_mode=secure")
        return self

    def __exit__(self, *exc):
        subprocess.run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", self.br],
                       capture_output=True)

    def flows(self, *flows: str) -> None:
        _run("ovs-ofctl", "del-flows", self.br)
        for f in flows:
            _run("ovs-ofctl", "add-flow", self.br, f)

    def trace(self, spec: str) -> str:
        return _run("ovs-appctl", "ofproto/trace", self.br, spec)

    def trace_all(self, specs: list[str]) -> list[str]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(self.trace, specs))


def _regs(out: str) -> dict[int, int]:
    """Final value per register (a later write to the same reg wins; partial
    writes are merged by bit range)."""
    regs: dict[int, int] = {}
    for reg, rng, val in _NOW.findall(out):
        reg, val = int(reg), int(val, 0)
        if rng and rng != "[]":
            lo, hi = (int(x) for x in rng[1:-1].split(".."))
            mask = ((1 << (hi - lo + 1)) - 1) << lo
            regs[reg] = (regs.get(reg, 0) & ~mask) | ((val << lo) & mask)
        else:
            regs[reg] = val
    return regs


def _random_packet(rng: random.Random, vlan: bool = False) -> dict:
    def mac():
        return ":".join(f"{b:02x}" for b in rng.randbytes(6))

    def ip():
        return ".".join(str(b) for b in rng.randbytes(4))

    p = {"dl_src": mac(), "dl_dst": mac(), "nw_src": ip(), "nw_dst": ip(),
         "tp_src": rng.randrange(65536), "tp_dst": rng.randrange(65536)}
    if vlan:
        p["dl_vlan"] = rng.randrange(4096)
    return p


def _spec(p: dict) -> str:
    vlan = f",dl_vlan={p['dl_vlan']}" if "dl_vlan" in p else ""
    return (f"in_port=LOCAL,tcp{vlan},dl_src={p['dl_src']},dl_dst={p['dl_dst']},"
            f"nw_src={p['nw_src']},nw_dst={p['nw_dst']},"
            f"tp_src={p['tp_src']},tp_dst={p['tp_dst']}")


@pytest.fixture(scope="module")
def tracer():
    with Tracer() as t:
        yield t


@pytest.fixture(scope="module")
def impl(tracer, packets):
    """hash_2words flavour of the running OVS build, from 30 hrw observations.
    Generic distro builds (here: Debian's 3.1.0 amd64 package) use mhash;
    SSE4.2 / ARMv8-CRC builds use crc32c.  Every other test then requires
    agreement on all samples with that one flavour."""
    n = 16
    tracer.flows(*_production_flows(n))
    sample = packets[:30]
    outs = tracer.trace_all([_spec(p) for p in sample])
    found = infer_hash_impl([(p, n, _regs(o).get(0, 0)) for p, o in zip(sample, outs)])
    print(f"running OVS hashes with hash_impl={found!r}")
    assert found is not None, "neither mhash nor crc32c reproduces this OVS"
    return found


@pytest.fixture(scope="module")
def packets():
    rng = random.Random(SEED)
    # a quarter of them VLAN-tagged: the VID is part of the symmetric_l4 hash
    return [_random_packet(rng, vlan=(i % 4 == 3)) for i in range(N_SAMPLES)]


def _production_flows(n: int) -> list[str]:
    return [f"table=0,tcp,actions=multipath(symmetric_l4,0,hrw,{n},0,"
            f"NXM_NX_REG0[0..15]),resubmit(,1)",
            *(f"table=1,reg0={i},actions=load:{i + 1}->NXM_NX_REG1[]" for i in range(n))]


@pytest.mark.parametrize("n", [2, 3, 5, 16])
def test_hrw_bucket_matches_ofproto_trace(tracer, packets, impl, n):
    tracer.flows(*_production_flows(n))
    outs = tracer.trace_all([_spec(p) for p in packets])
    agree, mismatches = 0, []
    for p, out in zip(packets, outs):
        regs = _regs(out)
        t1 = _T1.search(out)
        assert t1, f"table 1 not reached:\n{out}"
        ovs = int(t1.group(1), 0)
        final = _FINAL_REG1.search(out)
        assert regs.get(0, 0) == ovs and final and int(final.group(1), 0) == ovs + 1, out
        mine = pick_backend(p, n, hash_impl=impl)
        if mine == ovs:
            agree += 1
        else:
            mismatches.append((p, ovs, mine))
    print(f"N={n}: {agree}/{len(packets)} agree")
    assert not mismatches, f"{len(mismatches)} disagree, e.g. {mismatches[:3]}"
    # every bucket is actually exercised
    assert len({pick_backend(p, n, hash_impl=impl) for p in packets}) == n


def test_raw_symmetric_l4_hash_matches(tracer, packets):
    tracer.flows(
        "table=0,tcp,actions=multipath(symmetric_l4,0,modulo_n,65536,0,NXM_NX_REG0[0..15]),"
        "multipath(symmetric_l4,0,hash_threshold,65536,0,NXM_NX_REG0[16..31])",
    )
    sample = packets[:200]
    outs = tracer.trace_all([_spec(p) for p in sample])
    for p, out in zip(sample, outs):
        ovs = _regs(out).get(0, 0)
        mine = symmetric_l4_hash(p["dl_src"], p["dl_dst"], 0x0800,
                                 p.get("dl_vlan", 0), 6, p["nw_src"], p["nw_dst"],
                                 p["tp_src"], p["tp_dst"])
        assert mine == ovs, (p, hex(ovs), hex(mine))


@pytest.mark.parametrize("algorithm,n,arg,basis", [
    ("modulo_n", 7, 0, 0),
    ("hash_threshold", 7, 0, 0),
    ("iter_hash", 5, 0, 0),
    ("iter_hash", 5, 8, 0),
    ("hrw", 7, 0, 4660),
    ("hrw", 64, 0, 0),
    ("hrw", 100, 0, 0),  # > 64 links: OVS falls back to iter_hash
])
def test_other_algorithms_and_basis(tracer, packets, impl, algorithm, n, arg, basis):
    tracer.flows(f"table=0,tcp,actions=multipath(symmetric_l4,{basis},{algorithm},{n},"
                 f"{arg},NXM_NX_REG0[0..15])")
    sample = packets[:100]
    outs = tracer.trace_all([_spec(p) for p in sample])
    for p, out in zip(sample, outs):
        ovs = _regs(out).get(0, 0)
        assert pick_backend(p, n, algorithm=algorithm, arg=arg, basis=basis,
                            hash_impl=impl) == ovs, p


def test_symmetric_l3l4_matches(tracer, packets, impl):
    tracer.flows("table=0,tcp,actions=multipath(symmetric_l3l4,0,modulo_n,65536,0,"
                 "NXM_NX_REG0[0..15]),multipath(symmetric_l3l4,0,hash_threshold,65536,0,"
                 "NXM_NX_REG0[16..31]),multipath(symmetric_l3l4,0,hrw,5,0,NXM_NX_REG1[0..15])")
    sample = packets[:100]
    outs = tracer.trace_all([_spec(p) for p in sample])
    for p, out in zip(sample, outs):
        regs = _regs(out)
        h = symmetric_l3l4_hash(0x0800, 6, p["nw_src"], p["nw_dst"], p["tp_src"],
                                p["tp_dst"], hash_impl=impl)
        assert h == regs.get(0, 0), p
        assert multipath_link(h, 5, hash_impl=impl) == regs.get(1, 0), p
        assert pick_backend(p, 5, fields="symmetric_l3l4", hash_impl=impl) == regs.get(1, 0), p


def test_symmetric_and_reverse_direction(tracer, packets, impl):
    """The reply direction lands in the same bucket, in OVS and in Python."""
    n = 5
    tracer.flows(*_production_flows(n))
    sample = packets[:50]
    rev = [{**p, "dl_src": p["dl_dst"], "dl_dst": p["dl_src"], "nw_src": p["nw_dst"],
            "nw_dst": p["nw_src"], "tp_src": p["tp_dst"], "tp_dst": p["tp_src"]}
           for p in sample]
    outs = tracer.trace_all([_spec(p) for p in sample + rev])
    got = [_regs(o).get(0, 0) for o in outs]
    assert got[:50] == got[50:]
    assert got[50:] == [pick_backend(p, n, hash_impl=impl) for p in rev]



def test_the_compiled_multipath_flow_as_text_picks_the_slot_the_controller_predicts(tracer):
    """``mptcp-lb flows | ovs-ofctl add-flows`` must hash as the controller predicts for seed mode.

    The flow's text (its identity, ovs_flows/ofctl_text.py) once named hrw whatever the action's
    algorithm: a bridge programmed from it picked other slots than ``hashed_slot``.
    """
    from mininet_topos.datacenter import topology_config
    from mptcp_lb.config import parse_config
    from ovs_flows.compiler import compile_mux, hashed_slot
    from ovs_flows.ofctl_text import flow_text

    config = parse_config(topology_config(3, mode="token", key_source="seed"))
    vip = config.vips[0]
    (service,) = [flow_text(f, with_cookie=False) for f in compile_mux(config, config.muxes[0]).flows
                  if "multipath(" in flow_text(f)]
    assert "modulo_n" in service, service
    _run("ovs-vsctl", "--timeout=10", "add-port", tracer.br, f"{tracer.br}p1", "--", "set", "interface",
         f"{tracer.br}p1", "type=internal", "ofport_request=1")
    try:
        tracer.flows()
        _run("ovs-ofctl", "-O", "OpenFlow13", "add-flow", tracer.br, service)
        rng = random.Random(SEED + 1)
        tuples = [(".".join(str(b) for b in rng.randbytes(4)), rng.randrange(1024, 65536)) for _ in range(200)]
        outs = tracer.trace_all([f"in_port=1,tcp,dl_src=02:00:00:00:00:01,dl_dst=02:00:00:01:00:01,nw_src={src},"
                                 f"nw_dst={vip.address},tp_src={sport},tp_dst={vip.port}" for src, sport in tuples])
        got = [_regs(out).get(0) for out in outs]
        want = [hashed_slot(vip, src, vip.address, sport, vip.port) for src, sport in tuples]
        assert got == want
        assert len(set(want)) > 100  # the slots are spread, not one value by accident
    finally:
        subprocess.run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-port", tracer.br, f"{tracer.br}p1"],
                       capture_output=True)
