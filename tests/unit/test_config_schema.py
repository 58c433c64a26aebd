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
    if mode != "port":
        vip["mode"] = mode
        for d in vip["dips"]:
            d.pop("ports")
            d.pop("announce_port", None)
    if section == "controller":
        return raw.setdefault("controller", {}), "controller"
    if section == "muxes[]":
        return raw["muxes"][0], "muxes[0]"
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


@pytest.mark.parametrize("section, key", keys_where(lambda s, k: k.bounds is not None))
def test_a_value_outside_the_schemas_bounds_is_refused_by_name(raw_config, section, key):
    lo, hi = key.bounds
    step = 1 if key.kind == "integer" else max(lo, 1) / 2
    for value in (lo - step, hi + step):
        raw = copy.deepcopy(raw_config)
        obj, path = section_object(raw, section, key.modes[0] if "port" not in key.modes else "port")
        obj[key.name] = value
        with pytest.raises(ConfigError) as e:
            parse_config(raw)
        assert any(p.startswith(f"{path}.{key.name}: ") for p in e.value.problems), (value, e.value.problems)


@pytest.mark.parametrize("section, key", keys_where(
    lambda s, k: s in ("controller", "muxes[]", "vips[]", "vips[].health", "vips[].dips[]")
    and k.default not in (None, REQUIRED)))
def test_every_default_is_accepted_when_written_out(raw_config, section, key):
    obj, _ = section_object(raw_config, section, key.modes[0] if "port" not in key.modes else "port")
    obj[key.name] = key.default
    parse_config(raw_config)
