"""The OpenFlow channel over TLS with mutual certificates, and MUX dpids pinned (ryu_app/core.py: admit).

The demo topology runs with ``Datacenter(tls=True)``: a test PKI from
``ovs-pki``, OVS's SSL settings pointing at the switch certificate, the
controller requiring a certificate from the switch CA, and each MUX pinned to
that certificate and to 127.0.0.1. A fake switch (a TLS client speaking just
enough OpenFlow 1.3: hello, features reply, echo) then claims MUX 1's dpid.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import subprocess
import time

import pytest

from mininet_topos.harness import Datacenter, wait_for

OFP_VERSION = 4  # OpenFlow 1.3
OFPT_HELLO, OFPT_ECHO_REQUEST, OFPT_ECHO_REPLY, OFPT_FEATURES_REQUEST, OFPT_FEATURES_REPLY = 0, 2, 3, 5, 6
OFPT_MULTIPART_REQUEST, OFPT_MULTIPART_REPLY, OFPMP_PORT_DESC = 18, 19, 13
HEADER = struct.Struct("!BBHI")


@pytest.fixture(scope="module")
def dc():
    with Datacenter(prefix=f"tl{os.getpid() % 1000}", n_dips=2, tls=True) as dc:
        yield dc


def fake_switch(dc, dpid: int, key: str | None, cert: str | None, timeout: float = 8.0) -> str:
    """Connect as a switch claiming ``dpid``; "admitted" if the controller goes on to audit it, else why not."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(os.path.join(dc.pki.dir, "ca/controllerca/cacert.pem"))
    if cert:
        ctx.load_cert_chain(cert, key)
    raw = socket.create_connection(("127.0.0.1", dc.config["controller"]["openflow_port"]), timeout=timeout)
    try:
        sock = ctx.wrap_socket(raw)
        sock.sendall(HEADER.pack(OFP_VERSION, OFPT_HELLO, HEADER.size, 1))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            head = sock.recv(HEADER.size)
            if not head:
                return "closed by the controller"
            version, kind, length, xid = HEADER.unpack(head)
            body = sock.recv(length - HEADER.size) if length > HEADER.size else b""
            if kind == OFPT_FEATURES_REQUEST:
                sock.sendall(HEADER.pack(OFP_VERSION, OFPT_FEATURES_REPLY, 32, xid)
                             + struct.pack("!QIBB2xII", dpid, 0, 254, 0, 0, 0))
            elif kind == OFPT_ECHO_REQUEST:
                sock.sendall(HEADER.pack(OFP_VERSION, OFPT_ECHO_REPLY, length, xid) + body)
            elif kind == OFPT_MULTIPART_REQUEST:
                (mp_type,) = struct.unpack_from("!H", body)
                if mp_type != OFPMP_PORT_DESC:
                    return "admitted"  # the controller audits what it took for a MUX
                # os-ken asks for the ports before the app hears of the switch: none here.
                sock.sendall(HEADER.pack(OFP_VERSION, OFPT_MULTIPART_REPLY, 16, xid)
                             + struct.pack("!HH4x", OFPMP_PORT_DESC, 0))
        return "no answer"
    except (ssl.SSLError, ConnectionResetError) as e:
        return f"TLS refused: {e}"
    finally:
        raw.close()


def refused(dc, mux: int = 0) -> int:
    return dc.api("GET", "/muxes")[mux]["refused"]


def test_the_muxes_speak_tls_and_traffic_flows(dc):
    targets = subprocess.run(["ovs-vsctl", "get-controller", dc.mux_bridge(1)], capture_output=True,
                             text=True, check=True).stdout
    assert targets.startswith("ssl:127.0.0.1:")
    assert all(m["connected"] for m in dc.api("GET", "/muxes"))
    results = dc.run_traffic(conns=6, size=32 * 1024)
    assert all(r.get("verified") for r in results), results


def test_a_switch_claiming_a_live_muxs_dpid_is_refused_even_with_the_right_certificate(dc):
    before = refused(dc)
    key, cert = dc.pki.switch_files()
    assert fake_switch(dc, 0x1001, key, cert) == "closed by the controller"
    assert refused(dc) == before + 1
    mux1 = dc.api("GET", "/muxes")[0]
    assert mux1["connected"] and mux1["flows"] > 0  # the real MUX kept its place
    assert all(r.get("verified") for r in dc.run_traffic(conns=4, size=16 * 1024))


def test_a_certificate_that_is_not_the_pinned_one_is_refused(dc):
    before = refused(dc, 1)
    subprocess.run(["ovs-pki", f"--dir={dc.pki.dir}/ca", "--force", "req+sign", "rogue", "switch"], check=True,
                   capture_output=True, cwd=dc.pki.dir)
    rogue = (os.path.join(dc.pki.dir, "rogue-privkey.pem"), os.path.join(dc.pki.dir, "rogue-cert.pem"))
    # Even for a dpid no live connection holds: MUX 2's bridge steps aside first.
    subprocess.run(["ovs-vsctl", "del-controller", dc.mux_bridge(2)], check=True)
    try:
        wait_for("MUX 2 to disconnect", lambda: not dc.api("GET", "/muxes")[1]["connected"], 15)
        outcome = fake_switch(dc, 0x1002, *rogue)
        assert (outcome, refused(dc, 1)) == ("closed by the controller", before + 1), dc.controller_log()[-3000:]
    finally:
        port = dc.config["controller"]["openflow_port"]
        subprocess.run(["ovs-vsctl", "set-controller", dc.mux_bridge(2), f"ssl:127.0.0.1:{port}"], check=True)
    wait_for("MUX 2 back", lambda: dc.api("GET", "/muxes")[1]["connected"], 15)


def test_a_switch_without_a_certificate_gets_no_openflow_at_all(dc):
    outcome = fake_switch(dc, 0x1001, None, None)
    assert outcome.startswith("TLS refused") or outcome == "closed by the controller", outcome
    assert outcome != "admitted"
