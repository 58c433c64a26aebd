"""One YAML file describes the whole load balancer; it is validated up front.

Validation is all-or-nothing: ``load_config`` either returns a fully checked,
immutable ``Config`` or raises ``ConfigError`` listing every problem, each
naming the offending key path and value. Nothing downstream ever sees a
half-valid config, so nothing is ever half-applied.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Any

import yaml

MODES = ("port",)
MAX_DIP_ID = 4095  # 12 bits: the server ID a DIP can stamp into TCP timestamps
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


class ConfigError(ValueError):
    """A config is invalid; ``problems`` lists each problem with its key path."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config:\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class PortRange:
    start: int
    end: int

    def __contains__(self, port: int) -> bool:
        return self.start <= port <= self.end

    def overlaps(self, other: "PortRange") -> bool:
        return self.start <= other.end and other.start <= self.end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


@dataclass(frozen=True)
class Dip:
    id: int
    address: str
    mac: str
    ports: PortRange
    announce_port: int
    state: str = "active"  # active | draining


@dataclass(frozen=True)
class Vip:
    name: str
    address: str
    port: int
    mode: str
    dips: tuple[Dip, ...]

    def dip(self, dip_id: int) -> Dip:
        for d in self.dips:
            if d.id == dip_id:
                return d
        raise KeyError(dip_id)


@dataclass(frozen=True)
class Mux:
    name: str
    dpid: int
    address: str
    mac: str
    uplink_port: int
    fabric_port: int


@dataclass(frozen=True)
class ControllerSettings:
    openflow_host: str = "127.0.0.1"
    openflow_port: int = 6653
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    audit_interval: float = 2.0


@dataclass(frozen=True)
class Config:
    controller: ControllerSettings
    muxes: tuple[Mux, ...]
    vips: tuple[Vip, ...]

    def mux_by_dpid(self, dpid: int) -> Mux | None:
        return next((m for m in self.muxes if m.dpid == dpid), None)

    def vip(self, name: str) -> Vip:
        for v in self.vips:
            if v.name == name or v.address == name:
                return v
        raise KeyError(name)

    def with_vip(self, vip: Vip) -> "Config":
        """Return a copy with ``vip`` replacing the VIP of the same name."""
        return replace(self, vips=tuple(vip if v.name == vip.name else v for v in self.vips))


# --------------------------------------------------------------------------
# parsing


class _Checker:
    """Collects problems instead of stopping at the first one."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def mapping(self, obj: Any, path: str, required: set[str], optional: set[str]) -> dict | None:
        if not isinstance(obj, dict):
            self.fail(path or "(root)", f"expected a mapping, got {obj!r}")
            return None
        for key in obj:
            if key not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                self.fail(f"{path}.{key}" if path else str(key), f"unknown key (allowed: {allowed})")
        for key in sorted(required - set(obj)):
            self.fail(f"{path}.{key}" if path else key, "missing required key")
        return obj

    def integer(self, obj: dict, key: str, path: str, lo: int, hi: int, default: int | None = None) -> int | None:
        value = obj.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(f"{path}.{key}", f"{value!r} is not an integer in {lo}..{hi}")
            return None
        return value

    def ipv4(self, obj: dict, key: str, path: str, default: str | None = None) -> str | None:
        value = obj.get(key, default)
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            self.fail(f"{path}.{key}", f"{value!r} is not an IPv4 address")
            return None

    def mac(self, obj: dict, key: str, path: str) -> str | None:
        value = obj.get(key)
        if value is None:
            return None
        text = str(value).lower()
        if not _MAC_RE.match(text):
            self.fail(f"{path}.{key}", f"{value!r} is not a MAC address like 02:00:00:00:00:01")
            return None
        if int(text[:2], 16) & 1:
            self.fail(f"{path}.{key}", f"{value!r} is a multicast MAC address")
            return None
        return text

    def name(self, obj: dict, key: str, path: str) -> str | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_.-]{1,32}$", value):
            self.fail(f"{path}.{key}", f"{value!r} is not a name of 1-32 letters, digits, '_', '.', '-'")
            return None
        return value

    def port_range(self, obj: dict, key: str, path: str) -> PortRange | None:
        value = obj.get(key)
        if value is None:
            return None
        m = re.match(r"^\s*(\d+)\s*-\s*(\d+)\s*$", str(value))
        if not m:
            self.fail(f"{path}.{key}", f"{value!r} is not a port range like 4096-8191")
            return None
        start, end = int(m.group(1)), int(m.group(2))
        if not (1 <= start <= end <= 65535):
            self.fail(f"{path}.{key}", f"{value!r} must satisfy 1 <= start <= end <= 65535")
            return None
        return PortRange(start, end)


def _parse_controller(ck: _Checker, raw: Any) -> ControllerSettings:
    if raw is None:
        return ControllerSettings()
    obj = ck.mapping(raw, "controller", set(),
                     {"openflow_host", "openflow_port", "api_host", "api_port", "audit_interval"})
    if obj is None:
        return ControllerSettings()
    d = ControllerSettings()
    interval = obj.get("audit_interval", d.audit_interval)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.1 <= interval <= 3600:
        ck.fail("controller.audit_interval", f"{interval!r} is not a number of seconds in 0.1..3600")
        interval = d.audit_interval
    return ControllerSettings(
        openflow_host=ck.ipv4(obj, "openflow_host", "controller", d.openflow_host) or d.openflow_host,
        openflow_port=ck.integer(obj, "openflow_port", "controller", 1, 65535, d.openflow_port) or d.openflow_port,
        api_host=ck.ipv4(obj, "api_host", "controller", d.api_host) or d.api_host,
        api_port=ck.integer(obj, "api_port", "controller", 0, 65535, d.api_port) or 0,
        audit_interval=float(interval),
    )


def _parse_mux(ck: _Checker, raw: Any, path: str) -> Mux | None:
    obj = ck.mapping(raw, path, {"name", "dpid", "address", "mac", "uplink_port", "fabric_port"}, set())
    if obj is None:
        return None
    fields = dict(
        name=ck.name(obj, "name", path),
        dpid=ck.integer(obj, "dpid", path, 1, 2**64 - 1),
        address=ck.ipv4(obj, "address", path),
        mac=ck.mac(obj, "mac", path),
        uplink_port=ck.integer(obj, "uplink_port", path, 1, 0xFFFFFF00),
        fabric_port=ck.integer(obj, "fabric_port", path, 1, 0xFFFFFF00),
    )
    if fields["uplink_port"] is not None and fields["uplink_port"] == fields["fabric_port"]:
        ck.fail(f"{path}.fabric_port", f"{fields['fabric_port']} is also the uplink_port")
        return None
    if any(v is None for v in fields.values()):
        return None
    return Mux(**fields)


def parse_dip(ck: _Checker, raw: Any, path: str) -> Dip | None:
    obj = ck.mapping(raw, path, {"id", "address", "mac", "ports"}, {"announce_port", "state"})
    if obj is None:
        return None
    dip_id = ck.integer(obj, "id", path, 1, MAX_DIP_ID)
    address = ck.ipv4(obj, "address", path)
    mac = ck.mac(obj, "mac", path)
    ports = ck.port_range(obj, "ports", path)
    state = obj.get("state", "active")
    if state not in ("active", "draining"):
        ck.fail(f"{path}.state", f"{state!r} is not one of active, draining")
        return None
    announce = ck.integer(obj, "announce_port", path, 1, 65535, ports.start if ports else None)
    if ports is not None and announce is not None and announce not in ports:
        ck.fail(f"{path}.announce_port", f"{announce} is outside the DIP's ports {ports}")
        return None
    if None in (dip_id, address, mac, ports, announce):
        return None
    return Dip(id=dip_id, address=address, mac=mac, ports=ports, announce_port=announce, state=state)


def check_vip_dips(ck: _Checker, dips: list[Dip], service_port: int, path: str) -> None:
    """Cross-DIP rules: unique ids/addresses/MACs, disjoint ranges, no service port."""
    seen: dict[str, dict[Any, int]] = {"id": {}, "address": {}, "mac": {}}
    for i, d in enumerate(dips):
        for key in seen:
            value = getattr(d, key)
            if value in seen[key]:
                ck.fail(f"{path}[{i}].{key}", f"duplicate {key} {value!r} (also dips[{seen[key][value]}])")
            else:
                seen[key][value] = i
        if service_port in d.ports:
            ck.fail(f"{path}[{i}].ports", f"range {d.ports} contains the service port {service_port}")
        for j in range(i):
            if d.ports.overlaps(dips[j].ports):
                ck.fail(f"{path}[{i}].ports", f"range {d.ports} overlaps dips[{j}].ports {dips[j].ports}")


def _parse_vip(ck: _Checker, raw: Any, path: str) -> Vip | None:
    obj = ck.mapping(raw, path, {"name", "address", "port", "dips"}, {"mode"})
    if obj is None:
        return None
    name = ck.name(obj, "name", path)
    address = ck.ipv4(obj, "address", path)
    port = ck.integer(obj, "port", path, 1, 65535)
    mode = obj.get("mode", "port")
    if mode not in MODES:
        ck.fail(f"{path}.mode", f"{mode!r} is not one of {', '.join(MODES)}")
        mode = None
    raw_dips = obj.get("dips")
    dips: list[Dip] = []
    if raw_dips is not None:
        if not isinstance(raw_dips, list) or not raw_dips:
            ck.fail(f"{path}.dips", f"expected a non-empty list, got {raw_dips!r}")
        else:
            parsed = [parse_dip(ck, d, f"{path}.dips[{i}]") for i, d in enumerate(raw_dips)]
            dips = [d for d in parsed if d is not None]
            if len(dips) == len(parsed) and port is not None:
                check_vip_dips(ck, dips, port, f"{path}.dips")
    if None in (name, address, port, mode) or not dips:
        return None
    return Vip(name=name, address=address, port=port, mode=mode, dips=tuple(dips))


def _parse_list(ck: _Checker, raw: dict, key: str, parse) -> list:
    items = raw.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not items:
        ck.fail(key, f"expected a non-empty list, got {items!r}")
        return []
    return [parse(ck, item, f"{key}[{i}]") for i, item in enumerate(items)]


def _check_unique(ck: _Checker, items: list, key: str, what: str) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, key)
        if value in seen:
            ck.fail(f"{what}[{i}].{key}", f"duplicate {key} {value!r} (also {what}[{seen[value]}])")
        seen.setdefault(value, i)


def parse_config(raw: Any) -> Config:
    """Validate a parsed YAML document; raise ConfigError naming every problem."""
    ck = _Checker()
    if ck.mapping(raw, "", {"muxes", "vips"}, {"controller"}) is None:
        raise ConfigError(ck.problems)
    controller = _parse_controller(ck, raw.get("controller"))
    muxes = _parse_list(ck, raw, "muxes", _parse_mux)
    vips = _parse_list(ck, raw, "vips", _parse_vip)
    if None not in muxes:
        for key in ("name", "dpid", "address", "mac"):
            _check_unique(ck, muxes, key, "muxes")
    if None not in vips:
        for key in ("name", "address"):
            _check_unique(ck, vips, key, "vips")
        mux_addresses = {m.address: i for i, m in enumerate(muxes) if m is not None}
        for i, v in enumerate(vips):
            if v.address in mux_addresses:
                ck.fail(f"vips[{i}].address", f"{v.address} is also muxes[{mux_addresses[v.address]}].address")
    if ck.problems:
        raise ConfigError(ck.problems)
    return Config(controller=controller, muxes=tuple(muxes), vips=tuple(vips))


def load_config(path: str) -> Config:
    """Read and validate a YAML config file."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from e
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from e
    return parse_config(raw)


def validated_dip(vip: Vip, raw: Any) -> Dip:
    """Validate a DIP to be added to ``vip`` at run time against the others."""
    ck = _Checker()
    dip = parse_dip(ck, raw, "dip")
    if dip is not None:
        check_vip_dips(ck, [*vip.dips, dip], vip.port, f"vips[{vip.name}].dips")
    if ck.problems:
        raise ConfigError(ck.problems)
    return dip


def with_dip_added(config: Config, vip_name: str, raw: Any) -> Config:
    """A new config with a DIP added to a VIP, validated against its peers."""
    vip = config.vip(vip_name)
    return config.with_vip(replace(vip, dips=(*vip.dips, validated_dip(vip, raw))))


def with_dip_state(config: Config, vip_name: str, dip_id: int, state: str) -> Config:
    """A new config with one DIP set to ``active`` or ``draining``."""
    if state not in ("active", "draining"):
        raise ConfigError([f"state: {state!r} is not one of active, draining"])
    vip = config.vip(vip_name)
    vip.dip(dip_id)  # KeyError if absent
    dips = tuple(replace(d, state=state) if d.id == dip_id else d for d in vip.dips)
    return config.with_vip(replace(vip, dips=dips))


def with_dip_removed(config: Config, vip_name: str, dip_id: int) -> Config:
    """A new config without a DIP; a VIP keeps at least one DIP."""
    vip = config.vip(vip_name)
    vip.dip(dip_id)
    dips = tuple(d for d in vip.dips if d.id != dip_id)
    if not dips:
        raise ConfigError([f"vips[{vip.name}].dips: cannot remove the last DIP ({dip_id})"])
    return config.with_vip(replace(vip, dips=dips))


def dump_dip(d: Dip) -> dict:
    return {"id": d.id, "address": d.address, "mac": d.mac, "ports": str(d.ports),
            "announce_port": d.announce_port, "state": d.state}


__all__ = ["Config", "ConfigError", "ControllerSettings", "Dip", "Mux", "PortRange", "Vip",
           "load_config", "parse_config", "validated_dip", "dump_dip",
           "with_dip_added", "with_dip_state", "with_dip_removed"]
