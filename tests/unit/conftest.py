import copy
import ctypes
import os
import shutil

import pytest
import yaml

from mptcp_lb.bpf import BPF_DIR
from tests.platform import require_platform

EXAMPLE = "examples/port.yaml"


@pytest.fixture
def raw_config():
    """A fresh, valid config document (the shipped example) to mutate in a test."""
    with open(EXAMPLE) as f:
        return copy.deepcopy(yaml.safe_load(f))


def _bpf_platform_missing() -> str | None:
    """What truly prevents running the BPF objects here, or None."""
    if os.geteuid() != 0:
        return "needs root for BPF_PROG_TEST_RUN"
    try:
        ctypes.CDLL("libbpf.so.1")
    except OSError:
        return "libbpf.so.1 is not installed"
    if shutil.which("clang") is None and not all(c.with_suffix(".o").exists() for c in BPF_DIR.glob("*.c")):
        return "clang is not installed and bpf/*.o are not built"
    return None


@pytest.fixture(scope="session")
def bpf_platform():
    """Skip (fail in CI) where the BPF programs cannot be loaded and run."""
    require_platform(_bpf_platform_missing(), "BPF")
