"""The schema is the one source of the config's keys: the validator obeys it and docs/config.md is rendered from it."""

import copy
from pathlib import Path

import pytest

from mptcp_lb.config import ConfigError, parse_config
from mptcp_lb.config_schema import REQUIRED, SECTIONS, reference
from mptcp_lb.cli import main

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def test_docs_config_md_is_the_rendered_schema():
    assert REFERENCE.read_text() == reference(), "docs/config.md is stale: mptcp-lb config-reference > docs/config.md"


def test_the_cli_prints_the_reference(capsys):
    assert main(["config-reference"]) == 0
    assert capsys.readouterr().out == reference()


def section_object(raw: dict, section: str, mode: str) -> tuple[dict, str]:
    """The mapping of ``raw`` where ``section``'s keys go, made fit for ``mode``, and its key path."""
    vip = raw["vips"][0]
    vip["hash"] = "multipath"  # the hash whose slot count the schema bounds (dp_hash allows 256 only)
    if mode != "port":
        vip["mode"] = mode
        for d in vip["dips"]:
            d.pop("ports")
            d.pop("announce_port", None)
    if section == "controller":
        return raw.setdefault("controller", {}), "controller"
    if section == "muxes[]":
        return raw["muxes"][0], "muxes[0]"
    if section == "muxes[].bgp":
        speaker = {"speaker_port": 3, "address": "10.1.1.2", "mac": "02:00:00:01:01:01", "peer": "10.1.1.254",
                   "asn": 65001, "peer_asn": 65000}
        return raw["muxes"][0].setdefault("bgp", speaker), "muxes[0].bgp"
    if section == "vips[]":
        return vip, "vips[0]"
    if section == "vips[].health":
        return vip.setdefault("health", {"kind": "http"}), "vips[0].health"  # http: every key applies
    if section == "vips[].dips[]":
        return vip["dips"][0], "vips[0].dips[0]"
    raise AssertionError(section)


def keys_where(predicate):
    return [pytest.param(section, k, id=f"{section}.{name}") for section, keys in SECTIONS.items()
            for name, k in keys.items() if predicate(section, k)]


def mode_of(key) -> str:
    return "port" if "port" in key.modes else key.modes[0]


@pytest.mark.parametrize("section, key", keys_where(lambda s, k: k.bounds is not None))
def test_a_value_just_outside_the_schemas_bounds_is_refused_by_name(raw_config, section, key):
    lo, hi = key.bounds
    integer = key.kind == "integer"
    below, above = (lo - 1, hi + 1) if integer else (lo - max(lo / 2, 0.001), hi * 1.5)
    for value in (below, above):
        raw = copy.deepcopy(raw_config)
        obj, path = section_object(raw, section, mode_of(key))
        obj[key.name] = value
        with pytest.raises(ConfigError) as e:
            parse_config(raw)
        wanted = f"{path}.{key.name}: {value!r} is not {f'an integer in {lo}..{hi}' if integer else f'a number in {lo:g}..{hi:g}'}"
        assert wanted in e.value.problems, (wanted, e.value.problems)


@pytest.mark.parametrize("section, key", keys_where(
    lambda s, k: s in ("controller", "muxes[]", "muxes[].bgp", "vips[]", "vips[].health", "vips[].dips[]")
    and k.default not in (None, REQUIRED)))
def test_writing_a_default_out_changes_nothing(raw_config, section, key):
    written = copy.deepcopy(raw_config)
    obj, _ = section_object(written, section, mode_of(key))
    obj[key.name] = key.default
    omitted = copy.deepcopy(raw_config)
    obj, _ = section_object(omitted, section, mode_of(key))
    obj.pop(key.name, None)
    assert parse_config(written) == parse_config(omitted)
