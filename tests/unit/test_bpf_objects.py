import os

import pytest

from mptcp_lb import bpf


def test_objects_are_never_built_at_run_time(tmp_path, monkeypatch):
    monkeypatch.setattr(bpf, "BPF_DIR", tmp_path)
    (tmp_path / "prog.c").write_text("// source")
    with pytest.raises(FileNotFoundError, match=r"prog.o is missing or older than its sources: run `make bpf`"):
        bpf.built_object("prog.o")
    obj = tmp_path / "prog.o"
    obj.write_bytes(b"\x7fELF")
    assert bpf.built_object("prog.o") == obj
    (tmp_path / "shared.h").write_text("// newer header")
    os.utime(obj, (1, 1))  # the object now predates its sources
    with pytest.raises(FileNotFoundError, match="older than its sources"):
        bpf.built_object("prog.o")
