"""The MUX classifier (bpf/mux_classifier.c) run in the kernel with BPF_PROG_TEST_RUN.

Two layers, in the style of Katran's packet fixtures:

* a fixture table of hand-made frames, each with the verdict docs/token-steering.md
  §2 gives it, checked against both the BPF program and the Python reference;
* a differential fuzz: random and malformed layouts through the BPF program and
  through ``mptcp_codec.classify_frame``, which must agree on every frame.

The uplink program comes twice, for XDP (before an afxdp OVS port) and for tc
(before an AF_PACKET one), sharing its C: every test runs on both, and the
fuzz puts each frame through both.

The fuzz seed and size come from MPTCP_LB_FUZZ_SEED / MPTCP_LB_FUZZ_COUNT.
"""

from __future__ import annotations

import errno
import os
import random
import struct
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from scapy.all import (AH, ARP, IP, TCP, UDP, Dot1Q, IPOption_RR, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                       IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, PadN, Raw)

from mptcp_lb import bpf, classifier
from mptcp_lb.mptcp_codec import TAG_PREFIX, build_key_carrier, classifier_output, classify_frame, tag_mac
from tests.packets import (EOL, MSS, NOP, SACK_PERM, WSCALE, checksums_ok, ether_frame, mp_capable, mp_join,
                           tcp6_frame, tcp_frame, timestamp)

FUZZ_SEED = int(os.environ.get("MPTCP_LB_FUZZ_SEED", "20240611"))
FUZZ_COUNT = int(os.environ.get("MPTCP_LB_FUZZ_COUNT", "300000"))

@pytest.fixture(scope="module")
def loaded(bpf_platform):
    with classifier.load() as obj:
        yield obj


@dataclass(frozen=True)
class Uplink:
    """One hook's uplink program, loaded: what it returns for a frame it delivers, and when it delivers none."""

    hook: str
    fd: int
    redirect: int
    drop: int


PROGRAMS = classifier.UPLINK_PROGRAMS


def uplink_of(obj, hook: str) -> Uplink:
    name, redirect, drop = PROGRAMS[hook]
    return Uplink(hook, obj.prog_fd(name), redirect, drop)


@pytest.fixture(scope="module")
def both(loaded):
    loaded.configure(to_ovs=1, to_uplink=1)  # a test run never really redirects
    return [uplink_of(loaded, hook) for hook in PROGRAMS]


@pytest.fixture(params=list(PROGRAMS))
def prog(request, both):
    return both[list(PROGRAMS).index(request.param)]


def run(prog: Uplink, frame: bytes) -> bytes:
    """The frame as the uplink program hands it to OVS: every frame is redirected, none dropped."""
    result = bpf.test_run(prog.fd, frame)
    assert result.retval == prog.redirect, f"{prog.hook}: retval {result.retval} for {frame.hex()}"
    return result.data_out


def expected_frame(frame: bytes, verdict: tuple[int, int] | None) -> bytes:
    """What the reference says the classifier outputs; its verdict must be ``verdict``."""
    out = classifier_output(frame)
    assert verdict is None or out[:6] == bytes.fromhex(tag_mac(*verdict).replace(":", ""))
    return out


# --- fixtures -------------------------------------------------------------------

TOKEN = 0xDEADBEEF
TSECR = 0x12345ABC
LINUX_SYN = MSS + SACK_PERM + timestamp(0x11111111, 0) + NOP + WSCALE  # 20 bytes, as Linux sends them

TS_OPTS = NOP + NOP + timestamp(7, TSECR)  # a timestamp as Linux lays it out

HBH, DSTOPTS = IPv6ExtHdrHopByHop(), IPv6ExtHdrDestOpt()
PADDED_DSTOPTS = IPv6ExtHdrDestOpt(options=[PadN(optdata=bytes(14 * 8 - 2 + 6))])  # (14 + 1) * 8 = 120 bytes


def atomic_fragment(**kw):
    return IPv6ExtHdrFragment(offset=0, m=0, id=7, **kw)


IPV6_FIXTURES = [
    # Verdicts: the rules of IPv4, past the extension headers the classifier walks
    ("ipv6 ack with timestamp", tcp6_frame("A", TS_OPTS), (3, TSECR & 0xFFF)),
    ("ipv6 syn mp_join", tcp6_frame("S", LINUX_SYN + mp_join(TOKEN)), (2, TOKEN >> 8)),
    ("ipv6 hop-by-hop, routing, destination options, atomic fragment",
     tcp6_frame("A", TS_OPTS, ext=(HBH, IPv6ExtHdrRouting(), DSTOPTS, atomic_fragment())), (3, TSECR & 0xFFF)),
    ("ipv6 authentication header", tcp6_frame("S", mp_join(TOKEN), ext=(AH(nh=6, payloadlen=4, spi=1, icv=bytes(12)),)),
     (2, TOKEN >> 8)),
    ("ipv6 tcp exactly 128 bytes after the fixed header",
     tcp6_frame("A", TS_OPTS, ext=(PADDED_DSTOPTS, DSTOPTS)), (3, TSECR & 0xFFF)),
    ("ipv6 8 extension headers", tcp6_frame("A", TS_OPTS, ext=(DSTOPTS,) * 8), (3, TSECR & 0xFFF)),
    ("ipv6 reserved bits of an atomic fragment", tcp6_frame("A", TS_OPTS, ext=(atomic_fragment(res1=0xFF, res2=3),)),
     (3, TSECR & 0xFFF)),
    # No verdict
    ("ipv6 syn mp_capable: no seed mode", tcp6_frame("S", LINUX_SYN + mp_capable()), None),
    ("ipv6 syn/ack", tcp6_frame("SA", mp_capable(12) + NOP + NOP + timestamp(7, 9)), None),
    ("ipv6 first fragment (M set)", tcp6_frame("A", TS_OPTS, ext=(IPv6ExtHdrFragment(m=1),)), None),
    ("ipv6 later fragment", tcp6_frame("A", TS_OPTS, ext=(IPv6ExtHdrFragment(offset=1),)), None),
    ("ipv6 hop-by-hop not first", tcp6_frame("A", TS_OPTS, ext=(DSTOPTS, HBH)), None),
    ("ipv6 9 extension headers", tcp6_frame("A", TS_OPTS, ext=(DSTOPTS,) * 9), None),
    ("ipv6 tcp 136 bytes after the fixed header", tcp6_frame("A", TS_OPTS, ext=(PADDED_DSTOPTS, DSTOPTS, DSTOPTS)),
     None),
    ("ipv6 esp", ether_frame(IPv6(nh=50) / Raw(bytes(8) + TS_OPTS)), None),
    ("ipv6 no next header", ether_frame(IPv6(nh=59) / Raw(bytes(40))), None),
    ("ipv6 udp", ether_frame(IPv6() / UDP() / Raw(TS_OPTS)), None),
    ("ipv6 version 4 in an ipv6 frame", tcp6_frame("A", TS_OPTS)[:14] + b"\x40" + tcp6_frame("A", TS_OPTS)[15:], None),
    ("ipv6 cut inside an extension header", tcp6_frame("A", b"", ext=(DSTOPTS,))[:14 + 40 + 6], None),
    ("ipv6 tcp header cut short", tcp6_frame("A", TS_OPTS)[:14 + 40 + 30], None),
]

FIXTURES = [
    # Verdicts
    ("syn mp_capable, linux layout", tcp_frame("S", LINUX_SYN + mp_capable()), (1, 0)),
    ("syn mp_join, linux layout", tcp_frame("S", LINUX_SYN + mp_join(TOKEN)), (2, TOKEN >> 8)),
    ("syn mp_capable v0 with key", tcp_frame("S", mp_capable(12, version=0)), (1, 0)),
    ("syn with ece/cwr and mp_capable", tcp_frame("SEC", mp_capable()), (1, 0)),
    ("ack with timestamp", tcp_frame("A", TS_OPTS), (3, TSECR & 0xFFF)),
    ("data with timestamp and dss", tcp_frame("PA", NOP + NOP + timestamp(7, 0xFFFFFFFF) + bytes((30, 8, 0x20, 1))
                                              + bytes(4), payload=b"hello"), (3, 0xFFF)),
    ("fin/ack with timestamp", tcp_frame("FA", NOP + NOP + timestamp(7, 0x1000)), (3, 0)),
    ("timestamp after 30 nops", tcp_frame("A", NOP * 30 + timestamp(7, TSECR)), (3, TSECR & 0xFFF)),
    ("two timestamps: first counts", tcp_frame("A", timestamp(1, 0x111) + timestamp(2, 0x222) + NOP * 4),
     (3, 0x111)),
    ("ip options", tcp_frame("A", TS_OPTS, ip={"options": [IPOption_RR(routers=["1.2.3.4"])]}), (3, TSECR & 0xFFF)),
    ("df is not a fragment", tcp_frame("A", TS_OPTS, ip={"flags": "DF"}), (3, TSECR & 0xFFF)),
    ("ip total length is ignored", tcp_frame("A", TS_OPTS, ip={"len": 20}), (3, TSECR & 0xFFF)),
    ("mptcp of length 2 is not counted", tcp_frame("S", bytes((30, 2)) + mp_capable() + NOP + NOP), (1, 0)),
    ("two mptcp: mp_capable first", tcp_frame("S", mp_capable() + mp_join(TOKEN)), (1, 0)),
    ("two mptcp: mp_join first", tcp_frame("S", mp_join(TOKEN) + mp_capable()), (2, TOKEN >> 8)),
    ("junk after eol is ignored", tcp_frame("A", timestamp(7, TSECR) + EOL + b"\x05\x00\x08\x01\x00"),
     (3, TSECR & 0xFFF)),
    # No verdict
    ("syn/ack with mp_capable", tcp_frame("SA", mp_capable(12) + NOP + NOP + timestamp(7, 9)), None),
    ("syn without mptcp", tcp_frame("S", LINUX_SYN), None),
    ("syn with timestamp is never class 3", tcp_frame("S", TS_OPTS), None),
    ("ack with mp_capable, no timestamp", tcp_frame("A", mp_capable(20) + NOP * 4), None),
    ("ack without options", tcp_frame("A", b""), None),
    ("syn with other mptcp subtype first", tcp_frame("S", bytes((30, 4, 0x20, 0)) + mp_capable()), None),
    ("syn mp_join of length 16", tcp_frame("S", mp_join(TOKEN, 16)), None),
    ("syn mp_join of length 10", tcp_frame("S", mp_join(TOKEN, 10) + NOP + NOP), None),
    # §2.5 reads "first MPTCP option decides": a bad-length MP_JOIN is not skipped over.
    ("syn bad mp_join then mp_capable", tcp_frame("S", mp_join(TOKEN, 16) + mp_capable()), None),
    ("eol before mptcp", tcp_frame("S", MSS + EOL + NOP * 3 + mp_capable()), None),
    ("timestamp of length 8", tcp_frame("A", NOP + NOP + timestamp(7, TSECR, 8) + NOP + NOP), None),
    ("good then bad timestamp", tcp_frame("A", timestamp(7, TSECR) + NOP * 2 + timestamp(7, TSECR, 6) + NOP * 2),
     None),
    ("bad timestamp in a syn with mp_capable", tcp_frame("S", mp_capable() + timestamp(7, 0, 12)), None),
    ("zero-length option", tcp_frame("A", b"\x05\x00" + TS_OPTS + NOP + NOP), None),
    ("one-length option", tcp_frame("A", b"\x05\x01" + TS_OPTS + NOP + NOP), None),
    ("option without its length byte", tcp_frame("A", timestamp(7, TSECR) + NOP * 5 + b"\x04"), None),
    ("option running past the header", tcp_frame("A", NOP + NOP + timestamp(7, TSECR)[:6], doff=7,
                                                 payload=timestamp(7, 0)[6:]), None),
    ("doff 4", tcp_frame("A", b"", doff=4, payload=TS_OPTS), None),
    ("doff 0", tcp_frame("A", b"", doff=0), None),
    ("doff beyond the frame", tcp_frame("A", TS_OPTS, doff=15), None),
    ("mf fragment", tcp_frame("A", TS_OPTS, ip={"flags": "MF"}), None),
    ("non-first fragment", tcp_frame("A", TS_OPTS, ip={"frag": 1}), None),
    ("udp", ether_frame(IP() / UDP() / Raw(TS_OPTS)), None),
    ("arp", ether_frame(ARP()), None),
    ("ipv6 tcp with timestamp, scapy layout", ether_frame(IPv6() / TCP(flags="A", options=[("Timestamp", (7, 9))])),
     (3, 9)),
    *IPV6_FIXTURES,
    ("vlan-tagged ipv4", ether_frame(Dot1Q(vlan=5) / IP() / TCP(flags="S", dataofs=6) / Raw(mp_capable())), None),
]


def _variants() -> list[tuple[str, bytes, tuple[int, int] | None]]:
    """The fixtures plus frames cut short at interesting places and bad IP headers."""
    base = tcp_frame("A", TS_OPTS)  # tagged when whole
    extra = [(f"truncated to {n} bytes", base[:n], None) for n in (34, 40, 53, 54, 60, 65)]
    for name, first in (("ip version 6 in an ipv4 frame", 0x65), ("ihl 4", 0x44), ("ihl beyond the frame", 0x4F)):
        extra.append((name, base[:14] + bytes((first,)) + base[15:], None))
    return FIXTURES + extra


CASES = _variants()


@pytest.mark.parametrize(("frame", "verdict"), [pytest.param(f, v, id=n) for n, f, v in CASES])
def test_fixture(prog, frame, verdict):
    assert classify_frame(frame) == verdict, "the Python reference disagrees with the fixture"
    assert run(prog, frame) == expected_frame(frame, verdict), frame.hex()


def min_test_run_len(frame: bytes) -> int:
    """The shortest frame a tc test run accepts: Ethernet, and a whole IPv4 or IPv6 header if it says so.

    On a live interface such runts do reach tc ingress; there the verifier's
    bounds checks, not a test run, are what keep the parser inside the frame.
    """
    return {b"\x08\x00": 14 + 20, b"\x86\xdd": 14 + 40}.get(frame[12:14], 14)


def test_frames_shorter_than_ethernet_are_refused_by_the_kernel(prog):
    with pytest.raises(bpf.BpfError) as err:
        bpf.test_run(prog.fd, bytes(13))
    assert err.value.call == "bpf_prog_test_run_opts"


@pytest.mark.parametrize("whole, n", [*((tcp_frame("A", TS_OPTS), n) for n in range(14, 14 + 20)),
                                      *((tcp6_frame("A", TS_OPTS), n) for n in range(14, 14 + 40))])
def test_runts_pass_untouched_where_the_kernel_runs_them(prog, whole, n):
    """An IPv4 or IPv6 frame cut inside its IP header gets no verdict: a live uplink delivers such runts.

    This kernel's tc test run refuses them (EINVAL) instead; its XDP test run runs them, and
    wherever they run they must pass untouched.
    """
    frame = whole[:n]
    try:
        result = bpf.test_run(prog.fd, frame)
    except bpf.BpfError as e:
        assert prog.hook == "tc" and e.errno == errno.EINVAL and n < min_test_run_len(frame), (n, e)
    else:
        assert (result.retval, result.data_out) == (prog.redirect, frame)


def test_classify_bytes_uses_the_built_object(prog):
    frame = tcp_frame("S", LINUX_SYN + mp_join(TOKEN))
    assert classifier.classify_bytes(frame, prog.hook) == expected_frame(frame, (2, TOKEN >> 8))


# --- differential fuzz -------------------------------------------------------------

INTERESTING_KINDS = (0, 1, 2, 3, 4, 5, 8, 8, 8, 30, 30, 30, 253, 255)


IPV6_EXT_TYPES = (0, 0, 43, 60, 60, 44, 44, 51, 50, 59, 6)  # hop-by-hop, routing, destination, fragment, AH, ESP...


class FrameFuzzer:
    """Random Ethernet/IPv4/TCP and IPv6/TCP frames, mostly near-valid so that every rule gets exercised."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def option(self) -> bytes:
        r = self.rng
        pick = r.random()
        if pick < 0.15:
            return b"\x01" * r.randint(1, 3)
        if pick < 0.18:
            return b"\x00"
        if pick < 0.35:  # timestamp, mostly well formed
            length = 10 if r.random() < 0.85 else r.randint(0, 14)
            return (bytes((8, length)) + r.randbytes(8))[: max(length, 2)]
        if pick < 0.60:  # MPTCP: MP_CAPABLE, MP_JOIN or another subtype, various lengths
            subtype = r.choice((0, 0, 1, 1, 2, r.randrange(16)))
            length = r.choice((12, 12, 4, 3, 2, 16, 20, r.randint(0, 40)))
            body = bytes((subtype << 4 | r.randrange(16),)) + r.randbytes(38)
            return (bytes((30, length)) + body)[: max(length, 2)]
        if pick < 0.68:  # a key carrier a client forged, or another RFC 6994 experiment's option
            exid = 0x4D4C if r.random() < 0.8 else r.randrange(65536)
            length = 12 if r.random() < 0.85 else r.randint(2, 14)
            return (bytes((253, length)) + exid.to_bytes(2, "big") + r.randbytes(10))[: max(length, 2)]
        if pick < 0.85:  # a well formed option of another kind
            length = r.randint(2, 10)
            return bytes((r.choice((2, 3, 4, 5, 19, 34, 253)), length)) + r.randbytes(length - 2)
        return r.randbytes(r.randint(1, 4))  # soup

    def options(self) -> bytes:
        r = self.rng
        pick = r.random()
        if pick < 0.25:  # a layout real stacks send, so that every verdict comes up often
            return r.choice((LINUX_SYN + mp_capable(), LINUX_SYN + mp_join(r.getrandbits(32)), mp_capable(12),
                             NOP + NOP + timestamp(r.getrandbits(32), r.getrandbits(32)), mp_join(r.getrandbits(32)),
                             LINUX_SYN + mp_capable() + build_key_carrier(r.randbytes(8)),
                             build_key_carrier(r.randbytes(8)) * 3))
        if pick < 0.4:  # pure byte soup biased to interesting values
            n = r.randint(0, 40)
            return bytes(r.choice(INTERESTING_KINDS) if r.random() < 0.5 else r.randrange(256) for _ in range(n))
        out = b""
        for _ in range(r.randint(0, 6)):
            out += self.option()
        return out[:40]

    def frame(self) -> bytes:
        r = self.rng
        opts = self.options()
        if r.random() < 0.8:
            opts += b"\x01" * (-len(opts) % 4)  # pad to a whole data offset most of the time
        doff = 5 + len(opts) // 4 if r.random() < 0.85 else r.randrange(16)
        flags = r.choice((0x02, 0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0xC2, r.randrange(256)))
        tcp = struct.pack("!HHIIBBHHH", r.randrange(65536), 80, r.getrandbits(32), r.getrandbits(32),
                          doff << 4 | r.randrange(16), flags, 65535, 0, 0) + opts + r.randbytes(r.choice((0, 0, 5)))

        if r.random() < 0.3:
            ip, ethertype = self.ipv6_headers(), 0x86DD
        else:
            ip, ethertype = self.ipv4_header(), 0x0800
        if r.random() < 0.05:
            ethertype = r.choice((0x86DD, 0x0800, 0x8100, 0x0806, r.randrange(65536)))
        dst = (TAG_PREFIX + r.randbytes(4)) if r.random() < 0.05 else r.randbytes(6)  # now and then a forged tag
        frame = dst + r.randbytes(6) + struct.pack("!H", ethertype) + ip + tcp

        pick = r.random()
        if pick < 0.15:  # cut anywhere a test run still takes
            frame = frame[: r.randint(min(min_test_run_len(frame), len(frame)), len(frame))]
        elif pick < 0.25:  # flip a few bytes in the headers
            buf = bytearray(frame)
            for _ in range(r.randint(1, 3)):
                buf[r.randrange(14, min(len(buf), 14 + len(ip) + 60))] = r.randrange(256)
            frame = bytes(buf)
        return frame

    def ipv4_header(self) -> bytes:
        r = self.rng
        ihl = 5 if r.random() < 0.8 else r.randrange(16)
        version = 4 if r.random() < 0.97 else r.randrange(16)
        frag = r.choice((0, 0, 0, 0x4000, 0x2000, 0x0001, r.randrange(65536)))
        proto = 6 if r.random() < 0.95 else r.choice((17, 1, r.randrange(256)))
        return struct.pack("!BBHHHBBH4s4s", version << 4 | ihl, 0, r.randrange(65536), 1, frag, 64, proto, 0,
                           b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02") + r.randbytes(max(ihl - 5, 0) * 4)

    def ipv6_headers(self) -> bytes:
        """The fixed IPv6 header and a chain of extension headers, mostly ending in TCP."""
        r = self.rng
        types = [r.choice(IPV6_EXT_TYPES[:-1]) for _ in range(r.choice((0, 0, 1, 1, 2, 3, r.randint(0, 10))))]
        nexts = types[1:] + [6 if r.random() < 0.9 else r.choice(IPV6_EXT_TYPES + (17, r.randrange(256)))]
        chain = b""
        for kind, nxt in zip(types, nexts):
            if kind in (0, 43, 60):
                units = r.choice((0, 0, 0, 1, 2, 3, r.randint(0, 18)))
                chain += bytes((nxt, units)) + r.randbytes(units * 8 + 6)
            elif kind == 44:
                frag = r.choice((0, 0, 0, 1, 6, 8, 0xFFF8, r.randrange(65536)))
                chain += bytes((nxt, r.randrange(256))) + frag.to_bytes(2, "big") + r.randbytes(4)
            elif kind == 51:
                words = r.choice((1, 4, 4, r.randint(0, 30)))
                chain += bytes((nxt, words)) + r.randbytes(words * 4 + 6)
            else:
                chain += bytes((nxt,)) + r.randbytes(7)
        version = 6 if r.random() < 0.97 else r.randrange(16)
        first = types[0] if types else nexts[0]
        return struct.pack("!IHBB16s16s", version << 28 | r.getrandbits(20), r.randrange(65536), first, 64,
                           r.randbytes(16), r.randbytes(16)) + chain


def test_differential_fuzz_against_python_reference(both):
    """Each frame through the reference and through both hooks' programs: all three agree."""
    fuzzer = FrameFuzzer(random.Random(FUZZ_SEED))
    verdicts: Counter = Counter()
    mismatches = []
    start = time.monotonic()
    for _ in range(FUZZ_COUNT):
        frame = fuzzer.frame()
        verdict = classify_frame(frame)
        verdicts[verdict[0] if verdict else None] += 1
        if frame[12:14] == b"\x86\xdd":
            verdicts[("ipv6", verdict[0] if verdict else None)] += 1
        expected = expected_frame(frame, verdict)
        for prog in both:
            out = run(prog, frame)
            if out != expected:
                mismatches.append(f"{prog.hook}: {frame.hex()} python={verdict} bpf_dst={out[:6].hex()}")
    elapsed = time.monotonic() - start
    print(f"fuzz: {FUZZ_COUNT} frames, seed {FUZZ_SEED}, {elapsed:.1f}s, verdicts {dict(verdicts)}")
    assert not mismatches, (f"{len(mismatches)} mismatches (seed {FUZZ_SEED}), first ones:\n"
                            + "\n".join(mismatches[:20]))
    # The generator must reach every verdict often enough for the agreement to mean something, IPv6's too.
    for cls in (None, 1, 2, 3):
        assert verdicts[cls] > FUZZ_COUNT // 100, f"verdict {cls} seen only {verdicts[cls]} times"
    for cls in (None, 2, 3):
        assert verdicts[("ipv6", cls)] > FUZZ_COUNT // 1000, f"IPv6 verdict {cls} seen only {verdicts[('ipv6', cls)]}"
    assert verdicts[("ipv6", 1)] == 0  # no seed mode over IPv6


# --- redirects and counters ----------------------------------------------------------

def test_redirects_and_counts_each_verdict(loaded, prog):
    before = loaded.stats()
    frames = [tcp_frame("S", LINUX_SYN + mp_capable()), tcp_frame("S", LINUX_SYN + mp_join(TOKEN)),
              tcp_frame("A", TS_OPTS), tcp_frame("A", TS_OPTS), tcp_frame("A", b"")]
    for frame in frames:
        run(prog, frame)
    back = bpf.test_run(loaded.prog_fd(classifier.RETURN_PROGRAM), frames[0])
    assert back.retval == bpf.TC_ACT_REDIRECT and back.data_out == frames[0]  # OVS's output goes back untouched
    grown = {k: v - before[k] for k, v in loaded.stats().items()}
    assert grown == {"to_ovs": 5, "mp_capable": 1, "mp_join": 1, "timestamp": 2, "to_uplink": 1, "unconfigured": 0,
                     "over_budget": 0, "carrier_cleared": 0, "forged_tag": 0}


def test_an_unconfigured_classifier_delivers_nothing():
    with classifier.load() as obj:  # mux_ports never filled: no ifindex to redirect to
        frame = tcp_frame("A", TS_OPTS)
        for hook in PROGRAMS:
            prog = uplink_of(obj, hook)
            assert bpf.test_run(prog.fd, frame).retval == prog.drop
        assert bpf.test_run(obj.prog_fd(classifier.RETURN_PROGRAM), frame).retval == bpf.TC_ACT_SHOT
        assert obj.stats()["unconfigured"] == 3 and obj.stats()["to_ovs"] == 0


# --- what a client must not be able to do -------------------------------------------

def test_a_key_carrier_a_client_put_in_its_syn_becomes_nops_and_the_checksum_stays_right(loaded, prog):
    """At any alignment, and in XDP too, where the program fixes the checksum itself."""
    before = loaded.stats()
    carrier = build_key_carrier(bytes(range(8)))
    for opts in (LINUX_SYN + mp_capable() + carrier, carrier + LINUX_SYN + mp_capable(), carrier * 3):
        frame = tcp_frame("S", opts)
        assert checksums_ok(frame)
        out = run(prog, frame)
        assert carrier not in out and NOP * len(carrier) in out
        assert checksums_ok(out)  # a right checksum stays right, whatever the carrier's alignment
        assert out == classifier_output(frame)
    assert loaded.stats()["carrier_cleared"] - before["carrier_cleared"] == 5


def test_a_frame_that_arrives_with_a_tag_mac_and_earns_none_cannot_steer(loaded, prog):
    before = loaded.stats()
    forged = tcp_frame("A", b"", eth_dst="0a:4d:03:00:00:02")  # "server ID 2", without a timestamp
    out = run(prog, forged)
    assert out[:6] == bytes.fromhex("0a4d00000000") and out[6:] == forged[6:]
    arp = ether_frame(ARP(pdst="10.0.0.100"), dst="0a:4d:01:00:00:00")
    assert run(prog, arp)[:6] == bytes.fromhex("0a4d00000000")
    assert loaded.stats()["forged_tag"] - before["forged_tag"] == 2


@pytest.mark.parametrize("hook", list(PROGRAMS))
def test_syns_over_a_vips_punt_budget_go_untagged_to_the_hash(hook):
    with classifier.load() as obj:
        obj.configure(to_ovs=1, to_uplink=1)
        obj.set_punt_budgets({("10.0.0.100", 80): (1, 3)})  # 1/s, bursts of 3
        fd = uplink_of(obj, hook).fd
        syn = tcp_frame("S", LINUX_SYN + mp_capable(), dst="10.0.0.100", dport=80)
        other = tcp_frame("S", LINUX_SYN + mp_capable(), dst="10.0.0.200", dport=80)
        tags = [bpf.test_run(fd, syn).data_out[:3].hex() for _ in range(5)]
        assert tags == ["0a4d01"] * 3 + [syn[:3].hex()] * 2  # within the burst punted, then hashed
        assert bpf.test_run(fd, other).data_out[:3].hex() == "0a4d01"  # a VIP without a budget: not seed mode
        assert obj.stats()["over_budget"] == 2
