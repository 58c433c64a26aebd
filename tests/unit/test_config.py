import pytest
import yaml

from mptcp_lb.cli import main
from mptcp_lb.config import (ConfigError, load_config, parse_config, with_dip_added, with_dip_removed,
                             with_dip_state)
from mininet_topos.datacenter import topology_config


def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    return e.value.problems


def test_example_is_valid_and_matches_the_demo_topology(raw_config):
    config = parse_config(raw_config)
    assert [d.id for d in config.vips[0].dips] == [1, 2, 3]
    assert config.vips[0].dips[0].announce_port == 4096
    assert config.controller.api_host == "127.0.0.1"
    demo = topology_config(3, of_port=6653, api_port=8080)
    assert demo["muxes"] == raw_config["muxes"] and demo["vips"] == raw_config["vips"]


def test_overlapping_ranges_are_named(raw_config):
    raw_config["vips"][0]["dips"][1]["ports"] = "8000-9000"
    assert problems(raw_config) == [
        "vips[0].dips[1].ports: range 8000-9000 overlaps dips[0].ports 4096-8191"]


def test_range_containing_service_port(raw_config):
    raw_config["vips"][0]["dips"][0]["ports"] = "1-5000"
    assert problems(raw_config) == ["vips[0].dips[0].ports: range 1-5000 contains the service port 80"]


@pytest.mark.parametrize("key,value,dup", [("id", 1, "duplicate id 1"),
                                            ("address", "10.2.0.1", "duplicate address '10.2.0.1'"),
                                            ("mac", "02:00:00:02:00:01", "duplicate mac")])
def test_duplicate_dip_fields(raw_config, key, value, dup):
    raw_config["vips"][0]["dips"][2][key] = value
    (p,) = problems(raw_config)
    assert p.startswith(f"vips[0].dips[2].{key}: {dup}") and "(also dips[0])" in p


@pytest.mark.parametrize("path,value,expect", [
    (("vips", 0, "address"), "10.0.0.300", "vips[0].address: '10.0.0.300' is not an IPv4 address"),
    (("vips", 0, "dips", 0, "address"), "fe80::1",
     "vips[0].dips[0].address: 'fe80::1' is an IPv6 address: address6 takes it, beside an IPv4 address"),
    (("vips", 0, "address"), "2001:db8::100",
     "vips[0].address: '2001:db8::100' is an IPv6 address: address6 takes it"),
    (("controller", "api_host"), "::1", "controller.api_host: '::1' is an IPv6 address: only IPv4 is served here"),
    (("vips", 0, "dips", 0, "mac"), "02:00:00:02:00", "vips[0].dips[0].mac: '02:00:00:02:00' is not a MAC"),
    (("vips", 0, "dips", 0, "mac"), "01:00:5e:00:00:01", "is a multicast MAC address"),
    (("vips", 0, "dips", 0, "ports"), "9000-8000", "vips[0].dips[0].ports: '9000-8000' must satisfy"),
    (("vips", 0, "dips", 0, "ports"), "lots", "vips[0].dips[0].ports: 'lots' is not a port range"),
    (("vips", 0, "dips", 0, "id"), 4096, "vips[0].dips[0].id: 4096 is not an integer in 1..4095"),
    (("vips", 0, "port"), "80", "vips[0].port: '80' is not an integer in 1..65535"),
    (("vips", 0, "mode"), "magic", "vips[0].mode: 'magic' is not one of port"),
    (("muxes", 1, "fabric_port"), 1, "muxes[1].fabric_port: 1 is also the uplink_port"),
    (("muxes", 1, "dpid"), 0x1001, "muxes[1].dpid: duplicate dpid 4097"),
    (("controller", "audit_interval"), 0, "controller.audit_interval: 0 is not a number"),
    (("controller", "icmp_rate"), 0, "controller.icmp_rate: 0 is not an integer in 1..100000"),
    (("vips", 0, "dips", 0, "announce_port"), 80, "vips[0].dips[0].announce_port: 80 is outside"),
])
def test_bad_values_are_named(raw_config, path, value, expect):
    node = raw_config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(expect in p for p in problems(raw_config)), problems(raw_config)


@pytest.mark.parametrize("listeners,expect", [
    ({"openflow_port": 51017, "api_port": 51017},
     ["controller.api_port: 51017 is also controller.openflow_port, on 127.0.0.1 and 127.0.0.1: "
      "each listener needs a port of its own"]),
    ({"api_port": 9000, "metrics_port": 9000, "metrics_host": "0.0.0.0"},
     ["controller.metrics_port: 9000 is also controller.api_port, on 0.0.0.0 and 127.0.0.1: "
      "each listener needs a port of its own"]),
])
def test_controller_listeners_sharing_a_port_are_refused(raw_config, listeners, expect):
    raw_config.setdefault("controller", {}).update(listeners)
    assert problems(raw_config) == expect


@pytest.mark.parametrize("listeners", [
    {"api_port": 0, "metrics_port": 0},  # any free port, each its own
    {"api_port": 9000, "api_host": "127.0.0.1", "metrics_port": 9000, "metrics_host": "127.0.0.2"},
])
def test_controller_listeners_apart_are_taken(raw_config, listeners):
    raw_config.setdefault("controller", {}).update(listeners)
    controller = parse_config(raw_config).controller
    assert {k: getattr(controller, k) for k in listeners} == listeners


def test_unknown_and_missing_keys(raw_config):
    raw_config["vips"][0]["dips"][0]["colour"] = 3
    del raw_config["muxes"][0]["mac"]
    raw_config["extra"] = True
    got = problems(raw_config)
    assert any(p.startswith("vips[0].dips[0].colour: unknown key") for p in got)
    assert "muxes[0].mac: missing required key" in got
    assert any(p.startswith("extra: unknown key") for p in got)


def test_every_problem_is_reported_at_once(raw_config):
    raw_config["vips"][0]["address"] = "nope"
    raw_config["muxes"][0]["mac"] = "nope"
    assert len(problems(raw_config)) == 2


def test_not_a_mapping():
    assert problems([1, 2]) == ["(root): expected a mapping, got [1, 2]"]


def test_load_config_reports_yaml_and_io_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("vips: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.yaml"))


def test_runtime_changes_are_validated_whole(raw_config):
    config = parse_config(raw_config)
    added = with_dip_added(config, "web", {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04",
                                          "ports": "16384-20479"})
    assert [d.id for d in added.vips[0].dips] == [1, 2, 3, 4]
    with pytest.raises(ConfigError, match=r"overlaps dips\[0\]"):
        with_dip_added(config, "web", {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04",
                                       "ports": "5000-5001"})
    drained = with_dip_state(config, "web", 2, "draining")
    assert drained.vips[0].dip(2).state == "draining" and config.vips[0].dip(2).state == "active"
    with pytest.raises(KeyError):
        with_dip_state(config, "web", 9, "draining")
    one = with_dip_removed(with_dip_removed(config, "web", 1), "web", 2)
    with pytest.raises(ConfigError, match="cannot remove the last DIP"):
        with_dip_removed(one, "web", 3)


def test_check_config_cli(tmp_path, raw_config, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(raw_config))
    assert main(["check-config", str(good)]) == 0
    assert "OK (1 VIPs, 3 DIPs, 2 MUXes)" in capsys.readouterr().out
    raw_config["vips"][0]["dips"][0]["ports"] = "70-90"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw_config))
    with pytest.raises(SystemExit) as e:
        main(["check-config", str(bad)])
    assert e.value.code == 2
    assert "vips[0].dips[0].ports: range 70-90 contains the service port 80" in capsys.readouterr().err


def token_vip(raw_config, **extra):
    vip = raw_config["vips"][0]
    vip.update(mode="token", **extra)
    for d in vip["dips"]:
        d.pop("ports")
    return raw_config


def test_token_mode_assigns_contiguous_slices_by_default(raw_config):
    config = parse_config(token_vip(raw_config, slice_bits=4, key_source="pool"))
    vip = config.vips[0]
    assert vip.uses_tokens and not vip.uses_ports and vip.key_source == "pool"
    assert [sorted(d.slices) for d in vip.dips] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert all(d.ports is None and d.announce_port is None for d in vip.dips)


def test_explicit_slices_are_validated(raw_config):
    raw = token_vip(raw_config, slice_bits=4)
    for d, sl in zip(raw["vips"][0]["dips"], ([0, "1-3"], ["4-7"], ["7-9"])):
        d["slices"] = sl
    assert problems(raw) == ["vips[0].dips[2].slices: slices [7] are also owned by dips[1]"]
    raw["vips"][0]["dips"][2]["slices"] = ["8-16"]
    assert problems(raw) == ["vips[0].dips[2].slices: '8-16' is not a slice or range within 0..15 (slice_bits=4)"]
    del raw["vips"][0]["dips"][2]["slices"]
    assert problems(raw) == ["vips[0].dips[2].slices: missing: when any DIP names its slices, every DIP must"]


def test_mode_specific_keys(raw_config):
    raw_config["vips"][0]["key_source"] = "pool"
    assert problems(raw_config) == ["vips[0].key_source: 'pool': only for modes token, hybrid (mode is port)"]
    raw = token_vip(raw_config)
    raw["vips"][0].pop("key_source")
    raw["vips"][0]["dips"][0]["ports"] = "4096-8191"
    assert problems(raw) == ["vips[0].dips[0].ports: '4096-8191': only for modes port, hybrid (mode is token)"]
    raw["vips"][0]["dips"][0].pop("ports")
    raw["vips"][0]["key_source"] = "dice"
    assert problems(raw) == ["vips[0].key_source: 'dice' is not one of seed, pool"]


def test_seed_is_the_default_key_source_and_its_old_name_says_so(raw_config):
    raw = token_vip(raw_config)
    assert parse_config(raw).vips[0].key_source == "seed"
    raw["vips"][0]["key_source"] = "seed"
    assert parse_config(raw).vips[0].key_source == "seed"
    raw["vips"][0]["key_source"] = "mux"
    assert problems(raw) == ["vips[0].key_source: 'mux' was renamed 'seed'"]


def test_hybrid_needs_ports_and_takes_slices(raw_config):
    raw_config["vips"][0]["mode"] = "hybrid"
    vip = parse_config(raw_config).vips[0]
    assert vip.uses_ports and vip.uses_tokens and all(d.slices and d.ports for d in vip.dips)
    del raw_config["vips"][0]["dips"][0]["ports"]
    assert problems(raw_config) == ["vips[0].dips[0].ports: missing required key"]


def test_adding_a_dip_to_a_token_vip_needs_free_slices(raw_config):
    config = parse_config(token_vip(raw_config, slice_bits=2))
    new = {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04"}
    with pytest.raises(ConfigError, match=r"dip.slices: required for a token-mode VIP; free slices: \[3\]"):
        with_dip_added(config, "web", new)
    added = with_dip_added(config, "web", {**new, "slices": [3]})
    assert added.vips[0].dip(4).slices == frozenset({3})


def test_hash_method(raw_config):
    assert parse_config(raw_config).vips[0].hash == "dp_hash"
    raw_config["vips"][0]["hash"] = "multipath"
    assert parse_config(raw_config).vips[0].hash == "multipath"
    raw_config["vips"][0]["hash"] = "random"
    assert problems(raw_config) == ["vips[0].hash: 'random' is not one of dp_hash, multipath"]
    raw = token_vip(raw_config)
    raw["vips"][0]["hash"] = "dp_hash"
    assert problems(raw) == ["vips[0].hash: 'dp_hash': key_source seed needs multipath, the hash the controller "
                             "can predict when it picks a DIP for a SYN"]
    del raw["vips"][0]["hash"]
    assert parse_config(raw).vips[0].hash == "multipath"


def test_standalone_example_is_valid():
    config = load_config("examples/port-standalone.yaml")
    assert config.vips[0].hash == "multipath" and config.vips[0].mode == "port"


def test_a_vip_always_keeps_an_active_dip(raw_config):
    config = with_dip_state(with_dip_state(parse_config(raw_config), "web", 1, "draining"), "web", 2, "draining")
    with pytest.raises(ConfigError, match=r"cannot drain DIP 3: no active DIP would be left"):
        with_dip_state(config, "web", 3, "draining")
    with pytest.raises(ConfigError, match=r"cannot remove DIP 3: no active DIP would be left"):
        with_dip_removed(config, "web", 3)


@pytest.mark.parametrize("where, key, value, expect", [
    ("vip", "slots", 128, "vips[0].slots: 128 is not an integer in 256..256"),
    ("vip", "health", {"kind": "icmp"}, "vips[0].health.kind: 'icmp' is not one of tcp, http, none"),
    ("vip", "health", {"kind": "tcp", "path": "/x"}, "vips[0].health.path: '/x': only for kind http"),
    ("vip", "health", {"interval": 0.2, "timeout": 0.5}, "vips[0].health.timeout: 0.5 is longer than the interval"),
    ("vip", "health", {"fall": 0}, "vips[0].health.fall: 0 is not an integer in 1..100"),
    ("vip", "health", {"kind": "http", "path": "no-slash"}, "vips[0].health.path: 'no-slash' is not a request path"),
    ("dip", "weight", 0, "vips[0].dips[0].weight: 0 is not an integer in 1..1000"),
    ("controller", "transition_time", -1, "controller.transition_time: -1 is not a number in 0..86400"),
    ("controller", "transition_time", "5000" * 1000, "controller.transition_time: '5000"),
    ("controller", "probe_interface", "a" * 16, "controller.probe_interface: 'aaaaaaaaaaaaaaaa' is not an interface"),
    ("controller", "state_file", "relative.json", "controller.state_file: 'relative.json' is not an absolute"),
])
def test_life_under_change_keys_are_validated(raw_config, where, key, value, expect):
    target = {"vip": raw_config["vips"][0], "dip": raw_config["vips"][0]["dips"][0],
              "controller": raw_config.setdefault("controller", {})}[where]
    target[key] = value
    assert any(p.startswith(expect) for p in problems(raw_config)), problems(raw_config)


def test_life_under_change_defaults(raw_config):
    config = parse_config(raw_config)
    vip = config.vips[0]
    assert vip.slots == 256 and vip.health.kind == "tcp" and (vip.health.interval, vip.health.fall) == (0.5, 3)
    assert config.controller.transition_time == 300 and config.controller.probe_interface is None
    assert all(d.weight == 1 for d in vip.dips)
    raw_config["vips"][0].update(hash="multipath", slots=1024, health={"kind": "http", "path": "/healthz",
                                                                        "expect_status": 204})
    vip = parse_config(raw_config).vips[0]
    assert vip.slots == 1024 and (vip.health.path, vip.health.expect_status) == ("/healthz", 204)


def test_more_active_dips_than_slots_is_refused(raw_config):
    raw_config["vips"][0].update(hash="multipath", slots=2)
    assert "vips[0].slots: 2 slots for 3 active DIPs" in problems(raw_config)[0]
    raw_config["vips"][0]["dips"][2]["state"] = "draining"
    config = parse_config(raw_config)  # two active: fits
    with pytest.raises(ConfigError, match="2 slots for 3 active DIPs"):
        with_dip_state(config, "web", 3, "active")


def test_runtime_changes_round_trip_against_the_yaml(raw_config):
    from dataclasses import replace

    from mptcp_lb.config import runtime_changes, with_dip_added, with_dip_removed, with_runtime_changes

    base = parse_config(raw_config)
    current = with_dip_state(base, "web", 2, "draining")
    current = with_dip_removed(with_dip_state(current, "web", 3, "draining"), "web", 3)
    current = with_dip_added(current, "web", {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04",
                                              "ports": "16384-20479", "weight": 3})
    changes = runtime_changes(base, current)
    assert changes == {"web": {"removed": [3], "added": [{"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04",
                                                          "state": "active", "ports": "16384-20479",
                                                          "announce_port": 16384, "weight": 3}],
                               "states": {"2": "draining"}}}
    assert with_runtime_changes(base, changes) == current
    # A DIP changed in place (a new MAC) is a removal plus an addition.
    moved = current.with_vip(replace(current.vip("web"), dips=tuple(
        replace(d, mac="02:00:00:02:00:99") if d.id == 1 else d for d in current.vip("web").dips)))
    assert with_runtime_changes(base, runtime_changes(base, moved)) == moved
    with pytest.raises(ConfigError, match=r"state.nope: no VIP 'nope'"):
        with_runtime_changes(base, {"nope": changes["web"]})


@pytest.mark.parametrize("address, expect", [
    ("0.0.0.7", "vips[0].dips[0].address: '0.0.0.7' is not a unicast host address"),
    ("127.0.0.1", "is not a unicast host address"),
    ("224.0.0.1", "is not a unicast host address"),
    ("10.0.0.100", "vips[0].dips[0].address: 10.0.0.100 is the VIP itself"),
])
def test_a_dip_address_is_a_unicast_host_other_than_the_vip(raw_config, address, expect):
    raw_config["vips"][0]["dips"][0]["address"] = address
    assert any(p.startswith(expect) or expect in p for p in problems(raw_config)), problems(raw_config)


def huge_slices(vip):
    vip.update(mode="token", slice_bits=8)
    for d in vip["dips"]:
        del d["ports"]
        d["slices"] = ["9" * 5000]


@pytest.mark.parametrize("mutate, expect", [
    (lambda r: r["muxes"][0].__setitem__("mac", "0a:4d:01:00:00:01"), "muxes[0].mac: 0a:4d:01:00:00:01 is in the tag"),
    (lambda r: r["vips"][0]["dips"][1].__setitem__("mac", "0a:4d:00:00:00:07"), "vips[0].dips[1].mac: 0a:4d:00:00:00:07 is"),
    (lambda r: [d.__setitem__("state", "draining") for d in r["vips"][0]["dips"]], "vips[0].dips: every DIP is draining"),
    (lambda r: r["vips"][0]["dips"][0].__setitem__("ports", "9" * 5000 + "-1"), "is not a port range"),
    (lambda r: r["vips"][0]["dips"][0].__setitem__("id", "9" * 5000), "(5002 chars) is not an integer"),
    (lambda r: huge_slices(r["vips"][0]), "is not a slice or range"),
])
def test_config_foot_guns_are_named(raw_config, mutate, expect):
    mutate(raw_config)
    got = problems(raw_config)
    assert any(expect in p for p in got), got
    assert all(len(p) < 300 for p in got), got  # a huge value is cut short in its message


def test_a_number_too_long_for_python_is_a_config_error(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("muxes: []\nvips: []\ncontroller: {api_port: " + "9" * 5000 + "}\n")
    with pytest.raises(ConfigError, match="a value YAML cannot read"):
        load_config(str(path))


# ---------------------------------------------------------------- IPv6 (a dual-stack VIP: address6)

def dual_stack(raw_config, mode="token"):
    """The example with address6 on the VIP, every MUX and every DIP, in ``mode``."""
    raw_config["vips"][0].update(mode=mode, address6="fd00:10::100", key_source="pool")
    for i, m in enumerate(raw_config["muxes"], start=1):
        m["address6"] = f"fd00:11:{i}::1"
    for d in raw_config["vips"][0]["dips"]:
        d["address6"] = f"fd00:12::{d['id']}"
        if mode == "token":
            d.pop("ports")
    return raw_config


@pytest.mark.parametrize("mode", ["token", "hybrid"])
def test_a_dual_stack_vip_is_parsed(raw_config, mode):
    config = parse_config(dual_stack(raw_config, mode))
    vip = config.vips[0]
    assert vip.address6 == "fd00:10::100" and vip.address == "10.0.0.100"
    assert [m.address6 for m in config.muxes] == ["fd00:11:1::1", "fd00:11:2::1"]
    assert [d.address6 for d in vip.dips] == ["fd00:12::1", "fd00:12::2", "fd00:12::3"]
    assert config.vip("fd00:10::100") is vip


def test_port_mode_refuses_ipv6_naming_the_option_space(raw_config):
    raw_config["vips"][0]["address6"] = "fd00:10::100"
    with pytest.raises(ConfigError) as e:
        parse_config(raw_config)
    assert "vips[0].address6: fd00:10::100: port mode cannot serve IPv6: an IPv6 ADD_ADDR with a port" in str(e.value)
    assert "use mode hybrid" in str(e.value)


@pytest.mark.parametrize("where,value,expect", [
    (("vips", 0, "address6"), "10.0.0.7", "vips[0].address6: '10.0.0.7' is an IPv4 address: address takes it"),
    (("vips", 0, "address6"), "fd00::zz", "vips[0].address6: 'fd00::zz' is not an IPv6 address"),
    (("vips", 0, "address6"), "::ffff:10.0.0.7", "is an IPv4-mapped address"),
    (("vips", 0, "address6"), "ff02::1", "is a multicast address"),
    (("vips", 0, "address6"), "fe80::1", "is link-local"),
    (("muxes", 0, "address6"), "::", "muxes[0].address6: '::' is the unspecified address"),
    (("vips", 0, "dips", 1, "address6"), "::1", "vips[0].dips[1].address6: '::1' is the loopback address"),
    (("vips", 0, "dips", 1, "address6"), "fd00:12::1", "vips[0].dips[1].address6: duplicate address6 'fd00:12::1'"),
    (("vips", 0, "dips", 1, "address6"), "fd00:10::100", "vips[0].dips[1].address6: fd00:10::100 is the VIP itself"),
    (("muxes", 1, "address6"), "fd00:11:1::1", "muxes[1].address6: duplicate address6 'fd00:11:1::1'"),
    (("muxes", 1, "address6"), "fd00:10::100", "vips[0].address6: fd00:10::100 is also muxes[1].address6"),
])
def test_bad_ipv6_addresses_are_named(raw_config, where, value, expect):
    raw = dual_stack(raw_config)
    node = raw
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert expect in str(e.value)


def test_a_dual_stack_vip_needs_every_muxs_and_dips_ipv6_address(raw_config):
    raw = dual_stack(raw_config)
    del raw["muxes"][1]["address6"]
    del raw["vips"][0]["dips"][2]["address6"]
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    problems = e.value.problems
    assert any(p.startswith("muxes[1].address6: missing: vips[0] has address6") for p in problems), problems
    assert any(p.startswith("vips[0].dips[2].address6: missing: the VIP has address6 fd00:10::100")
               for p in problems), problems


def test_a_dip_added_at_run_time_to_a_dual_stack_vip_needs_its_ipv6_address(raw_config):
    from mptcp_lb.config import validated_dip, dump_dip

    vip = parse_config(dual_stack(raw_config)).vips[0]
    raw = {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04", "slices": [255]}
    with pytest.raises(ConfigError, match="dip.address6: missing: the VIP has address6 fd00:10::100"):
        validated_dip(vip, raw)
    dip = validated_dip(vip, {**raw, "address6": "fd00:12::4"})
    assert dip.address6 == "fd00:12::4"
    assert dump_dip(dip)["address6"] == "fd00:12::4"
    with pytest.raises(ConfigError, match="duplicate address6 'fd00:12::1'"):
        validated_dip(vip, {**raw, "address6": "fd00:12::1"})


@pytest.mark.parametrize("where", [("muxes", 1), ("vips", 0), ("vips", 0, "dips", 2)])
@pytest.mark.parametrize("key", ["address6", "address"])
def test_a_null_address_is_named_and_never_drops_its_entry(raw_config, where, key):
    raw = dual_stack(raw_config)
    node = raw
    for step in where:
        node = node[step]
    node[key] = None
    path = f"{where[0]}[{where[1]}]" + (f".dips[{where[3]}]" if len(where) > 2 else "")
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert f"{path}.{key}: null: give it a value or leave the key out" in e.value.problems


def test_a_null_address6_is_refused_for_a_dip_added_at_run_time(raw_config):
    from mptcp_lb.config import validated_dip

    vip = parse_config(dual_stack(raw_config)).vips[0]
    with pytest.raises(ConfigError, match="dip.address6: null"):
        validated_dip(vip, {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04", "slices": [255],
                            "address6": None})


def test_a_dip_added_at_run_time_may_not_be_the_vip(raw_config):
    from mptcp_lb.config import validated_dip

    vip = parse_config(dual_stack(raw_config)).vips[0]
    raw = {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04", "slices": [255], "address6": "fd00:12::4"}
    with pytest.raises(ConfigError, match="dip.address6: fd00:10::100 is the VIP itself"):
        validated_dip(vip, {**raw, "address6": "fd00:10::100"})
    with pytest.raises(ConfigError, match="dip.address: 10.0.0.100 is the VIP itself"):
        validated_dip(vip, {**raw, "address": "10.0.0.100"})


def test_problems_name_each_dip_as_written_even_after_a_bad_one(raw_config):
    raw = dual_stack(raw_config)
    raw["vips"][0]["dips"][0]["mac"] = "zz"
    del raw["vips"][0]["dips"][2]["address6"]
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert any(p.startswith("vips[0].dips[2].address6: missing") for p in e.value.problems), e.value.problems


def test_ipv6_over_bgp_is_refused_by_name(raw_config):
    from mininet_topos.datacenter import topology_config

    with pytest.raises(ConfigError) as e:
        parse_config(topology_config(3, mode="token", bgp=True, ipv6=True))
    assert any(p.startswith("vips[0].address6: fd00:10::100: muxes[0].bgp announces IPv4 VIPs only")
               for p in e.value.problems), e.value.problems


def test_port_mode_over_ipv6_names_the_vips_other_problems_too(raw_config):
    raw_config["vips"][0]["address6"] = "fd00:10::100"
    raw_config["vips"][0]["dips"][1]["ports"] = "1-100"
    with pytest.raises(ConfigError) as e:
        parse_config(raw_config)
    assert any("port mode cannot serve IPv6" in p for p in e.value.problems)
    assert any(p.startswith("vips[0].dips[1].ports") for p in e.value.problems), e.value.problems


def test_a_parser_that_gives_nothing_back_is_named_by_its_entry(raw_config, monkeypatch):
    from mptcp_lb import config as cfg

    monkeypatch.setattr(cfg, "parse_dip", lambda ck, raw, path, *args: None)  # a parser that says nothing
    with pytest.raises(ConfigError) as e:
        parse_config(raw_config)
    assert "vips[0].dips[0]: not valid: " in str(e.value)


def test_a_dip_may_not_hold_a_muxs_address_in_the_config_or_at_run_time(raw_config):
    from mptcp_lb.config import with_dip_added

    raw = dual_stack(raw_config)
    config = parse_config(raw)
    raw["vips"][0]["dips"][1]["address6"] = "fd00:11:2::1"
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert "vips[0].dips[1].address6: fd00:11:2::1 is also muxes[1].address6" in e.value.problems
    entry = {"id": 4, "address": "10.1.1.1", "mac": "02:00:00:02:00:04", "slices": [255], "address6": "fd00:12::4"}
    with pytest.raises(ConfigError, match=r"dip.address: 10.1.1.1 is also muxes\[0\].address"):
        with_dip_added(config, "web", entry)
