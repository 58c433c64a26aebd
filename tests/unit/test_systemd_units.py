"""The shipped systemd units: systemd accepts every line, and every command in them is one our CLI takes."""

import shlex
import shutil
import subprocess
import sys
from configparser import ConfigParser
from pathlib import Path

import pytest

from mptcp_lb.cli import build_parser
from tests.platform import require_platform

UNITS = sorted((Path(__file__).resolve().parents[2] / "deploy" / "systemd").glob("*.service"))
INSTALLED = "/usr/local/bin/mptcp-lb"
OURS = Path(sys.executable).with_name("mptcp-lb")  # the venv's console script


def commands(unit: Path) -> list[list[str]]:
    parser = ConfigParser(interpolation=None)
    parser.read(unit)
    service = parser["Service"]
    lines = [service[k] for k in ("ExecStartPre", "ExecStart") if k in service]
    return [shlex.split(line.replace("%i", "1")) for line in lines]


def test_there_are_units_for_the_controller_and_the_agent():
    assert [u.name for u in UNITS] == ["mptcp-lb-controller.service", "mptcp-lb-dip-agent@.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_every_command_is_one_the_cli_takes(unit):
    found = commands(unit)
    assert found, unit
    for argv in found:
        assert argv[0] == INSTALLED, argv
        build_parser().parse_args(argv[1:])  # SystemExit on an unknown option or command


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_finds_nothing(unit, tmp_path):
    require_platform(None if shutil.which("systemd-analyze") else "systemd-analyze is not installed", "systemd")
    assert OURS.exists(), OURS
    name = unit.name.replace("@.", "@1.")  # a template is verified as an instance
    (tmp_path / name).write_text(unit.read_text().replace(INSTALLED, str(OURS)))
    done = subprocess.run(["systemd-analyze", "verify", f"./{name}"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and not done.stderr.strip() and not done.stdout.strip(), done
