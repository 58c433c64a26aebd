import json
import os
import socket

import pytest

from mptcp_lb import classifier
from mptcp_lb.cli import main
from tests.integration.netns import sh


@pytest.fixture
def uplink_on_bridge():
    name, bridge = f"tcl{os.getpid() % 100000}", f"tclbr{os.getpid() % 100000}"
    try:
        sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
        sh("ip", "link", "set", name, "up")
        sh("ovs-vsctl", "--timeout=10", "add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev",
           "--", "add-port", bridge, name, "--", "set", "Interface", name, "ofport_request=3")
        yield name, bridge
    finally:
        sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge, check=False)
        if os.path.exists(f"/sys/class/net/{name}"):  # a tap a failed test left: delete it with the uplink
            sh("ip", "link", "del", classifier.tap_names(socket.if_nametoindex(name))[0], check=False)
            sh("ip", "link", "del", name, check=False)


def test_classifier_attach_stats_and_detach_from_the_cli(uplink_on_bridge, capsys):
    name, bridge = uplink_on_bridge
    assert main(["classifier", "attach", name, "--bridge", bridge, "--port-type", "system"]) == 0
    assert f"tc ingress, frames to OpenFlow port 3 of {bridge}" in capsys.readouterr().out
    assert "mux_uplink_ingress" in sh("tc", "filter", "show", "dev", name, "ingress")
    assert main(["classifier", "stats", name]) == 0
    assert json.loads(capsys.readouterr().out)["unconfigured"] == 0
    assert main(["classifier", "detach", name, "--bridge", bridge]) == 0
    assert name in sh("ovs-vsctl", "list-ports", bridge).split()
    assert sh("ovs-vsctl", "get", "Interface", name, "ofport").strip() == "3"
    assert sh("tc", "filter", "show", "dev", name, "ingress") == ""


def test_classifier_errors_name_the_interface(uplink_on_bridge, capsys):
    name, bridge = uplink_on_bridge
    assert main(["classifier", "attach", name + "x", "--bridge", bridge]) == 1
    assert f"classifier attach {name}x: interface {name}x does not exist" in capsys.readouterr().err
    assert main(["classifier", "stats", name]) == 1
    assert f"no classifier is attached to {name}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["classifier", "attach", name])
    assert "classifier attach needs --bridge" in capsys.readouterr().err
