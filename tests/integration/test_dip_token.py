"""Token steering on the DIP (bpf/dip_tc.c, dip_agent/programs.py) on a stock kernel, in namespaces.

Real namespaces, as a stock Linux client sees the DIP, dual-stack::

    client ns                          server ns (the DIP)
    10.78.0.1/24  <-- veth 0 -->  10.78.0.2/24   VIP/32 and VIP6/128 on lo, tc on both veths,
    10.78.1.1/24  <-- veth 1 -->  10.78.1.2/24   net.ipv4.tcp_syncookies=2 (IPv6's too)
    2001:db8:78:I::1/64 <-> 2001:db8:78:I::2/64 on pair I

The client's second addresses are plain `subflow` endpoints, so the kernel
joins VIP:80 (the DIP leaves the C flag off). Every claim is checked from
the server: the token of each accepted connection (MPTCP_INFO), its
subflows (MPTCP_SUBFLOW_ADDRS) and the options its subflows negotiated
(MPTCP_TCPINFO), plus the SHA-256 of every byte. The client side checks
the stamped TSvals in a capture, and nstat in both namespaces shows no
PAWS drop, spurious-RTO undo, DSACK undo or retransmission.

The programs themselves, on crafted frames, are tests/unit/test_dip_programs.py.
The scripts run inside the namespaces sit next to this file.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mptcp_lb.mptcp_codec import build_key_carrier, key_to_token, make_key, slice_of
from tests.integration.netns import REPO, WAIT, Namespaces, ServerDriver, in_ns, nstat, python_env, sh, wait_for_ipv6_dad
from tests.packets import MSS, NOP, SACK_PERM, WSCALE, mp_capable, timestamp

# A Linux SYN's options with room for the key carrier after them: 28 bytes, 40 with the carrier.
CARRIER_SYN_OPTIONS = (MSS + NOP + WSCALE + SACK_PERM + mp_capable(flags=0x81) + NOP + NOP + timestamp(12345, 0)
                       + NOP + NOP)

VIP = "10.78.9.100"
CLIENT = "10.78.0.1"
VIP6, NET6 = "2001:db8:78:9::100", "2001:db8:78"
# Per family: the VIP and the client's two addresses, as the kernel prints them.
FAMILIES = {"ipv4": (VIP, ("10.78.0.1", "10.78.1.1")), "ipv6": (VIP6, (f"{NET6}::1", f"{NET6}:1::1"))}
PORT = 80
SERVER_ID = 0x5A5
SLICE_BITS = 8
SLICES = {5}
HERE = Path(__file__).resolve().parent


# nstat counters that must not move: they are what a wrong TSval/TSecr (or checksum) would break.
# Both sides: PAWS (a stamped TSval going backwards) and checksum errors. The server, whose TSecr
# is restored, also: undo and spurious-RTO detection (a restored TSecr below the original).
MUST_STAY_ZERO_BOTH = ("TcpExtPAWSEstab", "TcpExtPAWSActive", "TcpInCsumErrors")
MUST_STAY_ZERO_SERVER = ("TcpExtTCPSpuriousRTOs", "TcpExtTCPDSACKUndo", "TcpExtTCPLossUndo")

TCPI_OPT_TIMESTAMPS, TCPI_OPT_SACK, TCPI_OPT_WSCALE = 1, 2, 4


# ============================================================== namespaces


class TokenNamespaces(Namespaces):
    """The shared two-pair topology with the VIP on the server's lo and a stock MPTCP client."""

    def __init__(self) -> None:
        super().__init__("mtk", "10.78", VIP)

    def create(self) -> None:
        super().create()
        sh("ip", "-n", self.server, "addr", "add", f"{VIP}/32", "dev", "lo")
        sh("ip", "-n", self.server, "addr", "add", f"{VIP6}/128", "dev", "lo")
        for i, (c_if, s_if) in enumerate(self.veths):
            sh("ip", "-n", self.client, "addr", "add", f"{NET6}:{i}::1/64", "dev", c_if, "nodad")
            sh("ip", "-n", self.server, "addr", "add", f"{NET6}:{i}::2/64", "dev", s_if, "nodad")
            sh("ip", "-n", self.client, "route", "add", f"{VIP6}/128", "via", f"{NET6}:{i}::2", "dev", c_if,
               "metric", str(100 * (i + 1)))  # IPv6 reads metric 0 as 1024: pair 0 would lose
        in_ns(self.server, "ip", "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "0")
        in_ns(self.client, "ip", "mptcp", "limits", "set", "subflows", "4", "add_addr_accepted", "0")
        # A stock client: one plain `subflow` endpoint on the second interface, which joins the
        # server's initial address and port since the DIP leaves the C flag off.
        c_if = self.veths[1][0]
        in_ns(self.client, "ip", "mptcp", "endpoint", "add", "10.78.1.1", "dev", c_if, "subflow")
        in_ns(self.client, "ip", "mptcp", "endpoint", "add", f"{NET6}:1::1", "dev", c_if, "subflow")
        wait_for_ipv6_dad(self.server, self.client)

    def tx_checksum_offload(self, on: bool) -> None:
        """With offload off every segment carries a full software checksum, so a wrong fix shows."""
        for c_if, s_if in self.veths:
            in_ns(self.client, "ethtool", "-K", c_if, "tx", "on" if on else "off")
            in_ns(self.server, "ethtool", "-K", s_if, "tx", "on" if on else "off")

    def clean_server(self) -> None:
        """Drop the tc programs' clsact qdiscs."""
        for s_if in self.server_ifs:
            sh("tc", "-n", self.server, "qdisc", "del", "dev", s_if, "clsact", check=False)


@pytest.fixture
def netns():
    with TokenNamespaces() as spaces:
        yield spaces


class Capture:
    """tcpdump in a namespace, writing segments from the VIP to a pcap."""

    def __init__(self, ns: str, path: Path, vip: str = VIP):
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", "any", "--immediate-mode", "-U", "-n", "-s", "200",
             "-w", str(path), f"tcp and src host {vip}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._ready = threading.Event()
        self._err: list[str] = []

        def read() -> None:
            for line in self.proc.stderr:
                self._err.append(line)
                if "listening on" in line:
                    self._ready.set()
        threading.Thread(target=read, daemon=True).start()
        if not self._ready.wait(WAIT):
            self.proc.kill()
            raise AssertionError(f"tcpdump did not start: {''.join(self._err)}")

    def stop(self) -> list:
        from scapy.all import rdpcap

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # ip netns exec execs tcpdump: this reaches it
        self.proc.wait(timeout=WAIT)
        return list(rdpcap(str(self.path)))


def nstat_delta(before: dict, after: dict) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def run_traffic(ns: str, conns: int, size: int, source_port: int = 0, min_subflows: int = 2,
                vip: str = VIP) -> list[dict]:
    cmd = ["ip", "netns", "exec", ns, sys.executable, str(HERE / "echo_client.py"), vip, str(PORT), str(conns),
           str(size), str(min_subflows), str(source_port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=python_env(), cwd=REPO, timeout=120)
    try:
        return json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError(f"client printed no JSON ({proc.returncode}): {proc.stderr}") from e


def check_verified(results: list[dict], size: int) -> None:
    for r in results:
        assert "error" not in r, r
        assert r["verified"] and r["reply"]["bytes"] == size, r
        assert r["client_subflows"] >= 2, r
        assert r["reply"]["dip"] == SERVER_ID


def check_joined(record: dict, family: str = "ipv4") -> None:
    """The server terminated >= 2 subflows, all on VIP:80, one per client address."""
    vip, clients = FAMILIES[family]
    assert "error" not in record, record
    locals_ = {sf[0] for sf in record["subflows"]}
    remotes = {sf[1].rsplit(":", 1)[0].strip("[]") for sf in record["subflows"]}
    assert len(record["subflows"]) >= 2, record
    # The join went to the service port: no C flag, no ADD_ADDR.
    assert locals_ == {f"[{vip}]:{PORT}" if family == "ipv6" else f"{vip}:{PORT}"}, record
    assert remotes == set(clients), record


def check_cookie_options(record: dict) -> None:
    """Each subflow decoded the client's WS and SACK (and no ECN) from its cookie.

    They live in the low 6 bits of the SYN/ACK's TSval and come back in the
    third ACK's TSecr, so this fails unless ingress restored it exactly.
    Measured without dip_ingress: random scales (0, 2, 5, 12, 13 for a real 9)
    and random SACK/ECN bits. Both namespaces have default sysctls, so the
    client's scale equals the server's own.
    """
    for sf in record["tcpinfo"]:
        assert sf["options"] == TCPI_OPT_TIMESTAMPS | TCPI_OPT_SACK | TCPI_OPT_WSCALE, record
        assert sf["snd_wscale"] == sf["rcv_wscale"], record


def check_timestamps(packets: list, server_id: int) -> dict[int, bytes]:
    """Every captured segment from the VIP carries the server id in TSval; returns SYN/ACK keys by client port."""
    from scapy.all import TCP

    keys, stamped = {}, 0
    for pkt in packets:
        if TCP not in pkt:
            continue
        opts = dict((k, v) for k, v in pkt[TCP].options if k in ("Timestamp", 30))
        if "Timestamp" in opts:
            assert opts["Timestamp"][0] & 0xFFF == server_id, pkt.summary()
            stamped += 1
        if pkt[TCP].flags == "SA" and 30 in opts and len(opts[30]) == 10:
            keys.setdefault(pkt[TCP].dport, opts[30][2:10])
    assert stamped > 0
    return keys


def check_counters(deltas: dict[str, dict[str, int]], server: str) -> None:
    """The timestamp-sensitive counters did not move (see MUST_STAY_ZERO_*).

    Retransmissions are reported, not asserted: the client's own timestamps
    are never rewritten, and on this shared VM its tail-loss probes and the
    odd spurious retransmission happen with or without the BPF programs
    (measured: 2 TLPs in 45 runs either way), so they say nothing about us.
    """
    for ns, delta in deltas.items():
        names = MUST_STAY_ZERO_BOTH + (MUST_STAY_ZERO_SERVER if ns == server else ())
        for name in names:
            assert delta.get(name, 0) == 0, (ns, name, delta)


def report(name: str, data: dict) -> None:
    print(f"\n[{name}] " + json.dumps(data, sort_keys=True))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("offload", ["tx-csum-on", "tx-csum-off"])
def test_pool_mode_tokens_in_slice_joins_and_clean_timestamps(netns, tmp_path, offload, family):
    """Over IPv6 too: the kernel's IPv6 SYN cookies adopt the key as IPv4's do, under the same sysctl."""
    vip = FAMILIES[family][0]
    netns.tx_checksum_offload(offload == "tx-csum-on")
    assert in_ns(netns.server, "sysctl", "-n", "net.mptcp.allow_join_initial_addr_port").strip() == "1"
    cookies_before = in_ns(netns.server, "sysctl", "-n", "net.ipv4.tcp_syncookies").strip()
    before = {ns: nstat(ns) for ns in (netns.server, netns.client)}
    driver = ServerDriver(netns.server, ifnames=netns.server_ifs, vip=VIP, port=PORT, server_id=SERVER_ID,
                          mode="pool", slices=sorted(SLICES), slice_bits=SLICE_BITS, syncookies=2,
                          vip6=VIP6 if family == "ipv6" else None)
    try:
        driver.call("apply")
        assert in_ns(netns.server, "sysctl", "-n", "net.ipv4.tcp_syncookies").strip() == "2"
        capture = Capture(netns.client, tmp_path / "client.pcap", vip=vip)
        conns, size = 8, 300_000
        try:
            results = run_traffic(netns.client, conns, size, vip=vip)
        finally:
            packets = capture.stop()
        check_verified(results, size)
        records = driver.call("conns")
        stats = driver.call("stats")
        assert len(records) == conns, records
        synack_keys = check_timestamps(packets, SERVER_ID)
        for record in records:
            check_joined(record, family)
            assert record["family"] == ("AF_INET6" if family == "ipv6" else "AF_INET"), record
            token = record["token"]
            assert token is not None and slice_of(token, SLICE_BITS) in SLICES, (hex(token or 0), record)
            # The key the client saw in the SYN/ACK is the key the server adopted.
            client_port = int(record["peer"].rsplit(":", 1)[1])
            assert key_to_token(synack_keys[client_port]) == token
            check_cookie_options(record)
        assert len({r["token"] for r in records}) == conns
        assert stats["synack_key_set"] == conns and stats["pool_empty"] == 0, stats
        handshakes = sum(len(r["subflows"]) for r in records)
        assert stats["tsecr_exact"] >= handshakes, stats
        driver.call("undo")
    finally:
        stderr = driver.close()
    assert not re.search(r"[0-9a-f]{16}", stderr), stderr  # no key (or anything key-like) was logged
    assert in_ns(netns.server, "sysctl", "-n", "net.ipv4.tcp_syncookies").strip() == cookies_before
    for s_if in netns.server_ifs:
        assert "clsact" not in sh("tc", "-n", netns.server, "qdisc", "show", "dev", s_if)
    deltas = {ns: nstat_delta(before[ns], nstat(ns)) for ns in before}
    report(f"pool {family} {offload} nstat deltas",
           {"server": deltas[netns.server], "client": deltas[netns.client], "bpf": stats})
    check_counters(deltas, netns.server)
    assert deltas[netns.server].get("TcpExtSyncookiesRecv", 0) >= conns  # the cookie path was taken


def test_seed_mode_userspace_key_and_carrier_syn(netns, tmp_path):
    before = {ns: nstat(ns) for ns in (netns.server, netns.client)}
    driver = ServerDriver(netns.server, ifnames=netns.server_ifs, vip=VIP, port=PORT, server_id=SERVER_ID,
                          mode="seed", syncookies=2)
    try:
        driver.call("apply")
        # 1. A key seeded from userspace for a fixed client port becomes the connection's key.
        key = make_key(SLICES, SLICE_BITS)
        client_port = 41000
        driver.call("seed", client_ip=CLIENT, client_port=client_port, key=key.hex())
        capture = Capture(netns.client, tmp_path / "client.pcap")
        try:
            results = run_traffic(netns.client, 1, 200_000, source_port=client_port)
        finally:
            packets = capture.stop()
        check_verified(results, 200_000)
        (record,) = driver.call("conns")
        check_joined(record)
        assert record["peer"] == f"{CLIENT}:{client_port}"
        assert record["token"] == key_to_token(key)
        check_cookie_options(record)
        assert key_to_token(check_timestamps(packets, SERVER_ID)[client_port]) == key_to_token(key)

        # 2. A SYN carrying the key carrier: ingress keeps the key, egress puts it in the SYN/ACK.
        carrier_key = make_key(SLICES, SLICE_BITS)
        sport, seq = 41500, 0x1234567
        probe = subprocess.run(
            ["ip", "netns", "exec", netns.client, sys.executable, str(HERE / "syn_probe.py"), VIP, str(PORT),
             str(sport), str(seq), (CARRIER_SYN_OPTIONS + build_key_carrier(carrier_key)).hex()],
            capture_output=True, text=True, env=python_env(), cwd=REPO)
        assert probe.returncode == 0, probe.stderr
        reply = json.loads(probe.stdout)
        assert reply is not None and reply["flags"] == "SA" and reply["ack"] == seq + 1, reply
        opts = dict((k, v) for k, v in reply["options"])
        mpc = bytes.fromhex(opts["30"] if "30" in opts else opts[30])
        assert key_to_token(mpc[2:10]) == key_to_token(carrier_key)
        assert opts["Timestamp"][0] & 0xFFF == SERVER_ID
        report("cookie SYN/ACK options seen by the client", {k: v for k, v in reply["options"] if k != 30})
        flow = driver.call("flow", client_ip=CLIENT, client_port=sport)
        assert flow["key_token"] == key_to_token(carrier_key) and flow["key_isn"] == seq, flow
        stats = driver.call("stats")
        assert stats["carrier_stored"] == 1 and stats["synack_key_set"] >= 2, stats
        driver.call("undo")
    finally:
        driver.close()
    deltas = {ns: nstat_delta(before[ns], nstat(ns)) for ns in before}
    report("seed nstat deltas", {"server": deltas[netns.server], "client": deltas[netns.client], "bpf": stats})
    check_counters(deltas, netns.server)


def test_control_without_key_rewrite_tokens_scatter(netns):
    """Key mode none and syncookies=1: the kernel's own random keys, so tokens are NOT in the slice."""
    before = {ns: nstat(ns) for ns in (netns.server, netns.client)}
    driver = ServerDriver(netns.server, ifnames=netns.server_ifs, vip=VIP, port=PORT, server_id=SERVER_ID,
                          mode="none", syncookies=1)
    try:
        driver.call("apply")
        conns = 12
        results = run_traffic(netns.client, conns, 50_000)
        records = driver.call("conns")
        deltas = {ns: nstat_delta(before[ns], nstat(ns)) for ns in before}
        report("control nstat deltas", {"server": deltas[netns.server], "client": deltas[netns.client],
                                        "results": [r.get("client_subflows") for r in results]})
        check_verified(results, 50_000)
        assert len(records) == conns
        for record in records:
            check_joined(record)
            assert record["tcpinfo"][0]["options"] & TCPI_OPT_SACK, record
        in_slice = sum(slice_of(r["token"], SLICE_BITS) in SLICES for r in records)
        # Each lands in the slice with probability 1/256; three or more of twelve is ~1e-5.
        assert in_slice <= 2, [hex(r["token"]) for r in records]
        driver.call("undo")
    finally:
        driver.close()
    check_counters(deltas, netns.server)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_control_rewrite_without_cookies_breaks(netns, family):
    """Pool mode but syncookies=1: the listener keeps its own key, so the rewrite must break things.

    The client believes the rewritten key: its joins name a token the server
    does not have, and its idea of the server's IDSN is wrong. This is what
    makes the pool test's success evidence of key adoption through cookies.
    """
    before = nstat(netns.server)
    driver = ServerDriver(netns.server, ifnames=netns.server_ifs, vip=VIP, port=PORT, server_id=SERVER_ID,
                          mode="pool", slices=sorted(SLICES), slice_bits=SLICE_BITS, syncookies=1,
                          vip6=VIP6 if family == "ipv6" else None)
    try:
        driver.call("apply")
        results = run_traffic(netns.client, 4, 50_000, min_subflows=2, vip=FAMILIES[family][0])
        records = driver.call("conns")
        stats = driver.call("stats")
        driver.call("undo")
    finally:
        driver.close()
    delta = nstat_delta(before, nstat(netns.server))
    report("rewrite without cookies", {"server": {k: v for k, v in delta.items() if k.startswith(("MPTcp", "Tcp"))},
                                       "client": [r.get("error") or r.get("verified") for r in results]})
    assert stats["synack_key_set"] == 4
    assert not any(r.get("verified") for r in results), results
    assert sum(slice_of(r["token"], SLICE_BITS) in SLICES for r in records if r.get("token") is not None) <= 1
    assert delta.get("MPTcpExtMPJoinNoTokenFound", 0) >= 1, delta
