import os
import subprocess

from mptcp_lb.cli import main


def xdp_attached(ifname: str) -> bool:
    return "xdpgeneric" in subprocess.run(["ip", "link", "show", ifname], capture_output=True, text=True).stdout


def test_classifier_attach_and_detach_from_the_cli(capsys):
    name = f"tcl{os.getpid() % 100000}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    try:
        assert main(["classifier", "attach", name]) == 0
        assert xdp_attached(name)
        assert main(["classifier", "detach", name]) == 0
        assert not xdp_attached(name)
        assert main(["classifier", "attach", name + "x"]) == 1
        assert f"classifier attach {name}x: no interface with this name" in capsys.readouterr().err
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
