"""The MUX classifier (bpf/mux_classifier.c): build, attach, detach and run it.

It is an XDP program that writes a tag MAC into the Ethernet destination
(docs/token-steering.md §2). On the MUX it is attached in generic mode to the
OVS-side interface, where it runs before OVS's AF_PACKET socket.
"""

from __future__ import annotations

import socket
from functools import cache

from mptcp_lb import bpf

CLASSIFIER_OBJECT = bpf.BPF_DIR / "mux_classifier.o"
PROGRAM = "mux_classifier"


def attach(ifname: str) -> None:
    """Attach the classifier to ifname in generic XDP mode (replacing any generic program there).

    The kernel keeps the program loaded while it is attached, so the object is closed here.
    """
    with bpf.BpfObject(bpf.built_object(CLASSIFIER_OBJECT.name)) as obj:
        bpf.attach_xdp(socket.if_nametoindex(ifname), obj.prog_fd(PROGRAM), generic=True)


def detach(ifname: str) -> None:
    """Remove the generic XDP program from ifname."""
    bpf.detach_xdp(socket.if_nametoindex(ifname), generic=True)


@cache
def _loaded() -> tuple[bpf.BpfObject, int]:
    """One loaded copy for the process: loading runs the verifier, which costs milliseconds."""
    obj = bpf.BpfObject(bpf.built_object(CLASSIFIER_OBJECT.name))
    return obj, obj.prog_fd(PROGRAM)


def classify_bytes(frame: bytes) -> bytes:
    """The frame as the classifier leaves it, run once in the kernel (BPF_PROG_TEST_RUN).

    The kernel refuses frames shorter than an Ethernet header (14 bytes) with EINVAL.
    """
    run = bpf.test_run(_loaded()[1], frame)
    if run.retval != bpf.XDP_PASS:
        raise RuntimeError(f"classifier returned {run.retval}, not XDP_PASS, for {frame.hex()}")
    return run.data_out
