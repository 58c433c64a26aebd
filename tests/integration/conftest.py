import os
import shutil
import subprocess

import pytest

from mininet_topos.stock import STOCK_TOOLS
from tests.platform import require_platform


def platform_missing() -> str | None:
    """What truly prevents integration tests here, or None. CI has all of it."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ovs-vsctl", "mnexec", "ip", "ethtool", "clang", "nstat", "tcpdump", *STOCK_TOOLS):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode:
        return "Open vSwitch is not running"
    if not os.path.exists("/proc/sys/net/mptcp/enabled"):
        return "kernel has no MPTCP"
    return None


@pytest.fixture(scope="session", autouse=True)
def _require_platform():
    require_platform(platform_missing(), "integration")
