"""docs/operating.md's MUX recipe, run as written: the ovs-vsctl commands build a bridge the controller programs.

The recipe's first line names the bridge, its two interfaces, the dpid and
the controller; only that line is replaced (by unique veths and a free port).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mininet_topos.harness import free_ports, wait_for

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operating.md"


def mux_recipe() -> list[str]:
    """The shell lines of the guide's first code block under "A MUX host", continuations joined."""
    section = GUIDE.read_text().split("## A MUX host", 1)[1]
    block = section.split("```", 2)[1].strip("\n")
    return block.replace("\\\n", "").splitlines()


COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")


def cookies(text: str) -> set[str]:
    """The flows' cookies: each is derived from its flow's text (ovs_flows/ofctl_text.py), so equal sets of
    cookies are equal sets of flows."""
    return {m.group(1) for line in text.splitlines() if "actions=" in line and (m := COOKIE.search(line))}


def mux_cookies(bridge: str) -> set[str]:
    return cookies(subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge],
                                  capture_output=True, text=True).stdout)


@pytest.fixture
def veths():
    tag = f"og{os.getpid() % 10000}"
    names = [f"{tag}u", f"{tag}f"]
    for name in names:
        subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"{name}p"], check=True)
        for end in (name, f"{name}p"):
            subprocess.run(["ip", "link", "set", end, "up"], check=True)
    bridge = f"{tag}mux"
    try:
        yield bridge, *names
    finally:
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", bridge], capture_output=True)
        for name in names:
            subprocess.run(["ip", "link", "del", name], capture_output=True)


def test_the_guides_mux_bridge_is_the_one_the_config_describes_and_the_controller_programs_it(veths, tmp_path):
    bridge, uplink, fabric = veths
    raw = yaml.safe_load((REPO / "examples" / "port.yaml").read_text())
    mux = raw["muxes"][0]
    of_port, api_port, metrics_port = free_ports(3)
    recipe = mux_recipe()
    assert recipe[0].startswith("BR="), recipe[0]  # the one line a reader edits
    recipe[0] = (f"BR={bridge} UPLINK={uplink} FABRIC={fabric} DPID={mux['dpid']} "
                 f"CONTROLLER=tcp:127.0.0.1:{of_port}")
    done = subprocess.run(["bash", "-euc", "\n".join(recipe)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    show = done.stdout  # the recipe ends with ovs-ofctl show
    assert f"dpid:{mux['dpid']:016x}" in show, show
    assert f" {mux['uplink_port']}({uplink}):" in show and f" {mux['fabric_port']}({fabric}):" in show, show
    assert subprocess.run(["ovs-vsctl", "get", "Bridge", bridge, "fail_mode"],
                          capture_output=True, text=True).stdout.strip() == "secure"

    token = tmp_path / "api.token"
    subprocess.run([sys.executable, "-m", "mptcp_lb.cli", "api-token", str(token)], check=True, capture_output=True)
    raw["controller"] = {"openflow_port": of_port, "api_port": api_port, "metrics_port": metrics_port,
                         "api_token_file": str(token), "audit_interval": 0.5}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    expected = cookies(subprocess.run([sys.executable, "-m", "mptcp_lb.cli", "flows", str(config), "--mux",
                                       mux["name"]], capture_output=True, text=True, check=True).stdout)
    assert len(expected) > 5, expected
    controller = subprocess.Popen([sys.executable, "-m", "mptcp_lb.cli", "controller", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_for(f"the controller to install the {len(expected)} flows `mptcp-lb flows` prints on {bridge}",
                 lambda: controller.poll() is None and mux_cookies(bridge) == expected, 30)
    finally:
        controller.terminate()
        try:
            _, err = controller.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            controller.kill()
            _, err = controller.communicate()
    assert controller.returncode == 0, err.decode()[-2000:]
