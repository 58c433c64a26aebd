"""The MUX classifier (bpf/mux_classifier.c): build, attach, detach and run it.

It is an XDP program that writes a tag MAC into the Ethernet destination
(docs/token-steering.md §2). On the MUX it is attached in generic mode to the
OVS-side interface, where it runs before OVS's AF_PACKET socket.
"""

from __future__ import annotations

import socket
import subprocess
from functools import cache
from pathlib import Path

from mptcp_lb import bpf

BPF_DIR = Path(__file__).resolve().parents[1] / "bpf"
CLASSIFIER_SOURCES = (BPF_DIR / "mux_classifier.c", BPF_DIR / "parse.h")
CLASSIFIER_OBJECT = BPF_DIR / "mux_classifier.o"
PROGRAM = "mux_classifier"


def ensure_built() -> Path:
    """The object file, (re)built with `make -C bpf` when missing or older than its sources."""
    if not CLASSIFIER_OBJECT.exists() or any(
        src.stat().st_mtime > CLASSIFIER_OBJECT.stat().st_mtime for src in CLASSIFIER_SOURCES
    ):
        # Only our target: another program's half-written source must not block this one.
        subprocess.run(["make", "-C", str(BPF_DIR), "-s", CLASSIFIER_OBJECT.name], check=True)
    return CLASSIFIER_OBJECT


def attach(ifname: str) -> None:
    """Attach the classifier to ifname in generic XDP mode (replacing any generic program there).

    The kernel keeps the program loaded while it is attached, so the object is closed here.
    """
    with bpf.BpfObject(ensure_built()) as obj:
        bpf.attach_xdp(socket.if_nametoindex(ifname), obj.prog_fd(PROGRAM), generic=True)


def detach(ifname: str) -> None:
    """Remove the generic XDP program from ifname."""
    bpf.detach_xdp(socket.if_nametoindex(ifname), generic=True)


@cache
def _loaded() -> tuple[bpf.BpfObject, int]:
    """One loaded copy for the process: loading runs the verifier, which costs milliseconds."""
    obj = bpf.BpfObject(ensure_built())
    return obj, obj.prog_fd(PROGRAM)


def classify_bytes(frame: bytes) -> bytes:
    """The frame as the classifier leaves it, run once in the kernel (BPF_PROG_TEST_RUN).

    The kernel refuses frames shorter than an Ethernet header (14 bytes) with EINVAL.
    """
    run = bpf.test_run(_loaded()[1], frame)
    if run.retval != bpf.XDP_PASS:
        raise RuntimeError(f"classifier returned {run.retval}, not XDP_PASS, for {frame.hex()}")
    return run.data_out
