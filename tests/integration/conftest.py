import os
import shutil
import subprocess

import pytest


def platform_missing() -> str | None:
    """What truly prevents integration tests here, or None. CI has all of it."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ovs-vsctl", "mnexec", "ip", "ethtool", "clang", "nstat", "tcpdump"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode:
        return "Open vSwitch is not running"
    if not os.path.exists("/proc/sys/net/mptcp/enabled"):
        return "kernel has no MPTCP"
    return None


@pytest.fixture(scope="session", autouse=True)
def _require_platform():
    missing = platform_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"integration platform incomplete in CI: {missing}")
        pytest.skip(missing)
