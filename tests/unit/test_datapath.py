import pytest

from mptcp_lb import datapath


def test_port_options_per_type():
    assert datapath.port_options("afxdp") == ["type=afxdp", "options:xdp-mode=best-effort"]
    assert datapath.port_options("afxdp-nonpmd") == ["type=afxdp-nonpmd", "options:xdp-mode=best-effort"]
    assert datapath.port_options("system") == ["type=system"]
    with pytest.raises(ValueError, match="port type 'dpdk' is not one of afxdp, afxdp-nonpmd, system"):
        datapath.port_options("dpdk")
    with pytest.raises(ValueError, match="'af_packet'"):
        datapath.resolve_port_type("af_packet")


def test_cpu_masks_read_as_ovs_writes_them():
    assert datapath.parse_cpu_mask("2") == 2
    assert datapath.parse_cpu_mask("0x6") == 6
    assert datapath.parse_cpu_mask("ff") == 255
    with pytest.raises(ValueError, match="CPU mask 'core1' is not hexadecimal"):
        datapath.parse_cpu_mask("core1")


def test_place_pmd_keeps_the_operators_mask_and_returns_the_other_cpus(monkeypatch):
    settings = {"pmd-cpu-mask": "1"}
    monkeypatch.setattr(datapath, "_other_config", settings.get)
    monkeypatch.setattr(datapath, "_set_other_config", settings.__setitem__)
    monkeypatch.setattr(datapath.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert datapath.place_pmd() == (0b1110, {"pmd-maxsleep": None})
    assert settings == {"pmd-cpu-mask": "1", "pmd-maxsleep": str(datapath.PMD_MAXSLEEP_US)}


def test_place_pmd_takes_the_last_cpu_when_nobody_chose(monkeypatch):
    settings = {"pmd-maxsleep": "0"}
    monkeypatch.setattr(datapath, "_other_config", settings.get)
    monkeypatch.setattr(datapath, "_set_other_config", settings.__setitem__)
    monkeypatch.setattr(datapath.os, "sched_getaffinity", lambda pid: {0, 1})
    assert datapath.place_pmd() == (0b01, {"pmd-cpu-mask": None})
    assert settings == {"pmd-cpu-mask": "2", "pmd-maxsleep": "0"}  # an operator's maxsleep stays
    monkeypatch.setattr(datapath.os, "sched_getaffinity", lambda pid: {0})
    settings.clear()
    assert datapath.place_pmd()[0] == 0  # one CPU: the PMD shares it, nothing to spare


def test_restore_other_config_undoes_what_place_pmd_set(monkeypatch):
    settings = {"pmd-maxsleep": "7"}
    calls = []
    monkeypatch.setattr(datapath, "_other_config", settings.get)
    monkeypatch.setattr(datapath, "_set_other_config", settings.__setitem__)
    monkeypatch.setattr(datapath.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(datapath.os, "sched_getaffinity", lambda pid: {0, 1})
    _, changed = datapath.place_pmd()
    datapath.restore_other_config(changed)
    assert calls == [["ovs-vsctl", "--timeout=5", "remove", "Open_vSwitch", ".", "other_config", "pmd-cpu-mask"]]
    datapath.restore_other_config({"pmd-maxsleep": "3"})
    assert settings["pmd-maxsleep"] == "3"
