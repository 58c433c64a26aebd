"""The codec's MPTCP crypto and option parsing against keys the kernel chose itself.

Topology (names carry this process id so parallel runs do not collide)::

    client ns  10.79.0.1/24  <-- veth -->  10.79.0.2/24  server ns

The client captures its own interface with an AF_PACKET socket while it
connects, so the test sees the handshake's MP_CAPABLE keys on the wire; both
ends report MPTCP_INFO, whose token and sequence numbers the kernel derived
from those keys. Both ends run in subprocesses under ``ip netns exec``.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scapy.all import TCP, Ether

from mptcp_lb.mptcp_codec import MpCapable, classify_frame, key_to_idsn, key_to_token, parse_mptcp, parse_timestamp
from tests.integration.netns import REPO, WAIT, Namespaces, python_env
from tests.packets import tcp_options

PROBE = Path(__file__).with_name("mptcp_key_probe.py")
CLIENT_ADDR, SERVER_ADDR, PORT = "10.79.0.1", "10.79.0.2", 8080  # pair 0 of Namespaces("mlbk", "10.79")



def probe_cmd(ns: str, *args: str) -> list[str]:
    return ["ip", "netns", "exec", ns, sys.executable, str(PROBE), *args]


@pytest.fixture
def pair():
    with Namespaces("mlbk", "10.79", pairs=1) as spaces:
        yield spaces


def read_line(proc: subprocess.Popen, timeout: float = WAIT) -> str:
    """The next line a subprocess prints, or an AssertionError with its stderr."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], deadline - time.monotonic())[0]:
            line = proc.stdout.readline()
            if line:
                return line.rstrip("\n")
            break
    proc.kill()
    raise AssertionError(f"no line from {proc.args}: {proc.communicate()[1]}")


def handshake(spaces: Namespaces) -> tuple[dict, dict]:
    """Run one MPTCP connection: (server MPTCP_INFO, client {"info", "frames"})."""
    server = subprocess.Popen(probe_cmd(spaces.server, "server", SERVER_ADDR, str(PORT)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=python_env(), cwd=REPO)
    try:
        assert read_line(server) == "listening"
        client = subprocess.run(probe_cmd(spaces.client, "client", spaces.veths[0][0], SERVER_ADDR, str(PORT)),
                                capture_output=True, text=True, timeout=2 * WAIT, env=python_env(), cwd=REPO)
        assert client.returncode == 0, client.stderr
        out, err = server.communicate(timeout=WAIT)
        assert server.returncode == 0, err
        return json.loads(out), json.loads(client.stdout)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_kernel_tokens_and_idsns_match_the_keys_on_the_wire(pair):
    server_info, client = handshake(pair)
    frames = [bytes.fromhex(f) for f in client["frames"]]
    flags = [Ether(f)[TCP].flags for f in frames]
    syn = frames[[str(f) for f in flags].index("S")]
    syn_ack = frames[[str(f) for f in flags].index("SA")]
    third_ack = frames[-1]
    assert str(flags[-1]) == "A"

    assert parse_mptcp(tcp_options(syn)[30]) == MpCapable(version=1, flags=0x01, sender_key=None, receiver_key=None)
    server_mpc = parse_mptcp(tcp_options(syn_ack)[30])
    assert server_mpc.version == 1 and server_mpc.receiver_key is None
    server_key = server_mpc.sender_key
    ack_mpc = parse_mptcp(tcp_options(third_ack)[30])
    assert ack_mpc.receiver_key == server_key  # the client echoes the server's key
    client_key = ack_mpc.sender_key

    assert server_info["token"] == key_to_token(server_key)
    assert client["info"]["token"] == key_to_token(client_key)
    # Before any data both ends sit at IDSN + 1: the server's write_seq and the client's
    # rcv_nxt follow the server key, the client's write_seq its own.
    assert server_info["write_seq"] == (key_to_idsn(server_key) + 1) % 2**64
    assert client["info"]["rcv_nxt"] == (key_to_idsn(server_key) + 1) % 2**64
    assert client["info"]["write_seq"] == (key_to_idsn(client_key) + 1) % 2**64

    # The reference classifier on real kernel segments.
    assert classify_frame(syn) == (1, 0)
    assert classify_frame(syn_ack) is None
    tsecr = parse_timestamp(tcp_options(third_ack)[8]).tsecr
    assert classify_frame(third_ack) == (3, tsecr & 0xFFF)
