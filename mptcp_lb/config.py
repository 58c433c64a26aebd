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

from mptcp_lb import config_schema as schema
from mptcp_lb.config_schema import MODES, PORT_MODES, TOKEN_MODES
from mptcp_lb.mptcp_codec import TAG_PREFIX

KEY_SOURCES = ("seed", "pool")  # who makes a connection's key: the controller (seed mode), or the DIP's pool
RENAMED_KEY_SOURCES = {"mux": "seed"}  # old value -> its name now, so an old config says what to write
# How a MUX hashes packets that carry no steering information:
#  dp_hash:   OVS select group; the datapath hashes, so megaflows do not grow per connection.
#  multipath: a plain flow (installable without groups) whose choice the controller can
#             predict exactly (ovs_flows/ovs_hash.py); megaflows then match the L4 ports.
HASH_METHODS = ("dp_hash", "multipath")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def _r(value) -> str:
    """A value as an error message shows it: repr, cut short (a 5000-digit string must not fill the screen)."""
    try:
        text = repr(value)
    except ValueError:  # an int of over 4300 digits has no repr
        return f"a {value.bit_length()}-bit integer"
    return text if len(text) <= 48 else f"{text[:40]}...({len(text)} chars)"


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
    ports: PortRange | None  # port/hybrid modes
    announce_port: int | None
    state: str = "active"  # active | draining
    slices: frozenset[int] = frozenset()  # token/hybrid modes: token slices this DIP owns
    weight: int = 1  # its share of the VIP's slots, relative to the other DIPs'
    address6: str | None = None  # its IPv6 address on the fabric (required with the VIP's address6)


HEALTH_KINDS = ("tcp", "http", "none")


@dataclass(frozen=True)
class HealthCheck:
    """How the controller probes a VIP's DIPs (ryu_app/health.py); kind "none" turns probing off.

    The defaults take a dead DIP out of the slot table within 3 s: ``fall``
    failures ``interval`` apart, each given ``timeout``, then one audit.
    """

    kind: str = schema.default("vips[].health", "kind")
    port: int | None = None  # default: the VIP's service port
    path: str = schema.default("vips[].health", "path")  # http: the request path
    expect_status: int = schema.default("vips[].health", "expect_status")  # http: a healthy DIP's answer
    interval: float = schema.default("vips[].health", "interval")
    timeout: float = schema.default("vips[].health", "timeout")
    rise: int = schema.default("vips[].health", "rise")  # successes in a row that bring a down DIP back
    fall: int = schema.default("vips[].health", "fall")  # failures in a row that take a DIP down


DEFAULT_SLICE_BITS = schema.default("vips[]", "slice_bits")
DEFAULT_SLOTS = schema.default("vips[]", "slots")  # OVS 3.1: a dp_hash select group stays stable up to 256 buckets
MAX_MULTIPATH_SLOTS = schema.bounds("vips[]", "slots")[1]


@dataclass(frozen=True)
class Vip:
    name: str
    address: str
    port: int
    mode: str
    dips: tuple[Dip, ...]
    key_source: str = "seed"
    slice_bits: int = DEFAULT_SLICE_BITS
    hash: str = "dp_hash"
    slots: int = DEFAULT_SLOTS  # the hash space the slot table maps to DIPs (mptcp_lb/slots.py)
    punt_rate: int | None = None  # seed mode: its punt budget per MUX (None: controller.punt_rate)
    health: HealthCheck = HealthCheck()
    address6: str | None = None  # the same service over IPv6 (token and hybrid modes)

    @property
    def uses_ports(self) -> bool:
        return self.mode in PORT_MODES

    @property
    def uses_tokens(self) -> bool:
        return self.mode in TOKEN_MODES

    def dip(self, dip_id: int) -> Dip:
        for d in self.dips:
            if d.id == dip_id:
                return d
        raise KeyError(dip_id)


@dataclass(frozen=True)
class BgpSpeaker:
    """``muxes[].bgp``: the MUX's BGP speaker, on a port of its bridge (config_schema says what each is)."""

    speaker_port: int
    address: str
    mac: str
    peer: str
    asn: int
    peer_asn: int
    hold_time: int = schema.default("muxes[].bgp", "hold_time")
    bfd_interval: float = schema.default("muxes[].bgp", "bfd_interval")
    bfd_multiplier: int = schema.default("muxes[].bgp", "bfd_multiplier")
    lease_time: int = schema.default("muxes[].bgp", "lease_time")


@dataclass(frozen=True)
class Mux:
    name: str
    dpid: int
    address: str
    mac: str
    uplink_port: int
    fabric_port: int
    # Who may claim this dpid: the OpenFlow peer's address, and/or its TLS certificate's SHA-256.
    pin_address: str | None = None
    pin_cert_sha256: str | None = None
    bgp: BgpSpeaker | None = None
    address6: str | None = None  # the router's IPv6 next hop (required when a VIP has address6)


@dataclass(frozen=True)
class TlsSettings:
    """The OpenFlow channel's TLS: this controller's key and certificate, and the CA its switches' are from."""

    privkey: str
    cert: str
    ca_cert: str


@dataclass(frozen=True)
class ControllerSettings:
    """``controller:``; what each setting means, and its default, is in config_schema."""

    openflow_host: str = schema.default("controller", "openflow_host")
    openflow_port: int = schema.default("controller", "openflow_port")
    api_host: str = schema.default("controller", "api_host")
    api_port: int = schema.default("controller", "api_port")
    audit_interval: float = schema.default("controller", "audit_interval")
    punt_rate: int = schema.default("controller", "punt_rate")
    transition_time: float = schema.default("controller", "transition_time")
    probe_interface: str | None = None
    state_file: str | None = None
    api_token_file: str | None = None
    metrics_host: str = schema.default("controller", "metrics_host")
    metrics_port: int = schema.default("controller", "metrics_port")
    tls: TlsSettings | None = None
    icmp_rate: int = schema.default("controller", "icmp_rate")


@dataclass(frozen=True)
class Config:
    controller: ControllerSettings
    muxes: tuple[Mux, ...]
    vips: tuple[Vip, ...]

    def vip(self, name: str) -> Vip:
        for v in self.vips:
            if name in (v.name, v.address) or (v.address6 is not None and name == v.address6):
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
            self.fail(path or "(root)", f"expected a mapping, got {_r(obj)}")
            return None
        for key in obj:
            if key not in required | optional:
                allowed = ", ".join(sorted(required | optional))
                self.fail(f"{path}.{key}" if path else str(key), f"unknown key (allowed: {allowed})")
        for key in sorted(required - set(obj)):
            self.fail(f"{path}.{key}" if path else key, "missing required key")
        return obj

    def keys(self, obj: Any, path: str, section: str, mode: str | None = None) -> dict | None:
        """``obj`` as a mapping of ``section``'s keys (config_schema), those required present."""
        return self.mapping(obj, path, *schema.allowed(section, mode))

    def for_mode(self, obj: dict, path: str, section: str, mode: str) -> bool:
        """No key of ``section`` that belongs to other modes than ``mode``."""
        wrong = [k for k in obj if k in schema.SECTIONS[section] and mode not in schema.key(section, k).modes]
        for k in wrong:
            modes = ", ".join(schema.key(section, k).modes)
            self.fail(f"{path}.{k}", f"{_r(obj[k])}: only for modes {modes} (mode is {mode})")
        return not wrong

    def get(self, obj: dict, key: str, path: str, default=None):
        """``obj[key]``, or ``default`` without it; a key given as null is a problem (it would hide a typo)."""
        if key in obj and obj[key] is None:
            self.fail(f"{path}.{key}", "null: give it a value or leave the key out")
            return None
        return obj.get(key, default)

    def int_key(self, obj: dict, name: str, path: str, section: str) -> int | None:
        """An integer key within the schema's bounds, or the schema's default."""
        return self.integer(obj, name, path, *schema.bounds(section, name), schema.default(section, name))

    def seconds_key(self, obj: dict, name: str, path: str, section: str) -> float:
        return self.number(obj, name, path, *schema.bounds(section, name), schema.default(section, name))

    def integer(self, obj: dict, key: str, path: str, lo: int, hi: int, default: int | None = None) -> int | None:
        value = self.get(obj, key, path, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.fail(f"{path}.{key}", f"{_r(value)} is not an integer in {lo}..{hi}")
            return None
        return value

    def number(self, obj: dict, key: str, path: str, lo: float, hi: float, default: float) -> float:
        """A number of seconds or the like; the default stands in for a bad value (which is reported)."""
        value = obj.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            self.fail(f"{path}.{key}", f"{_r(value)} is not a number in {lo:g}..{hi:g}")
            return default
        return float(value)

    def text(self, obj: dict, key: str, path: str, pattern: str, what: str) -> str | None:
        value = self.get(obj, key, path)
        if value is None:
            return None
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            self.fail(f"{path}.{key}", f"{_r(value)} is not {what}")
            return None
        return value

    def ipv4(self, obj: dict, key: str, path: str, default: str | None = None, twin: str | None = None) -> str | None:
        """An IPv4 address; ``twin`` names the key that takes an IPv6 address given here instead."""
        value = self.get(obj, key, path, default)
        if value is None:
            return None
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            try:
                ipaddress.IPv6Address(str(value))
                why = (f"is an IPv6 address: {twin} takes it, beside an IPv4 {key}" if twin else
                       "is an IPv6 address: only IPv4 is served here")
            except ValueError:
                why = "is not an IPv4 address"
            self.fail(f"{path}.{key}", f"{_r(value)} {why}")
            return None

    def ipv6(self, obj: dict, key: str, path: str) -> str | None:
        """A global or unique-local unicast IPv6 address, compressed; None (and a problem) otherwise."""
        value = self.get(obj, key, path)
        if value is None:
            return None
        try:
            ip = ipaddress.IPv6Address(str(value))
        except ValueError:
            try:
                ipaddress.IPv4Address(str(value))
                why = f"is an IPv4 address: {key.removesuffix('6')} takes it"
            except ValueError:
                why = "is not an IPv6 address"
            self.fail(f"{path}.{key}", f"{_r(value)} {why}")
            return None
        why = ("an IPv4-mapped address" if ip.ipv4_mapped else "a multicast address" if ip.is_multicast
               else "the unspecified address" if ip.is_unspecified else "the loopback address" if ip.is_loopback
               else "link-local" if ip.is_link_local else "")
        if why:
            self.fail(f"{path}.{key}", f"{_r(value)} is {why}: a global or unique-local unicast address is needed")
            return None
        return str(ip)

    def unicast_host(self, address: str, path: str) -> bool:
        """A host's own address: not 0.0.0.0/8 (second chance marks use it), loopback, multicast or broadcast."""
        ip = ipaddress.IPv4Address(address)
        if ip in ipaddress.IPv4Network("0.0.0.0/8") or ip.is_loopback or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
            self.fail(path, f"{_r(address)} is not a unicast host address")
            return False
        return True

    def mac(self, obj: dict, key: str, path: str) -> str | None:
        value = self.get(obj, key, path)
        if value is None:
            return None
        text = str(value).lower()
        if not _MAC_RE.match(text):
            self.fail(f"{path}.{key}", f"{_r(value)} is not a MAC address like 02:00:00:00:00:01")
            return None
        if int(text[:2], 16) & 1:
            self.fail(f"{path}.{key}", f"{_r(value)} is a multicast MAC address")
            return None
        return text

    def name(self, obj: dict, key: str, path: str) -> str | None:
        value = self.get(obj, key, path)
        if value is None:
            return None
        if not isinstance(value, str) or not re.match(r"^[A-Za-z0-9_.-]{1,32}$", value):
            self.fail(f"{path}.{key}", f"{_r(value)} is not a name of 1-32 letters, digits, '_', '.', '-'")
            return None
        return value

    def port_range(self, obj: dict, key: str, path: str) -> PortRange | None:
        value = self.get(obj, key, path)
        if value is None:
            return None
        m = re.match(r"^\s*(\d{1,5})\s*-\s*(\d{1,5})\s*$", str(value))
        if not m:
            self.fail(f"{path}.{key}", f"{_r(value)} is not a port range like 4096-8191")
            return None
        start, end = int(m.group(1)), int(m.group(2))
        if not (1 <= start <= end <= 65535):
            self.fail(f"{path}.{key}", f"{_r(value)} must satisfy 1 <= start <= end <= 65535")
            return None
        return PortRange(start, end)


def _parse_controller(ck: _Checker, raw: Any) -> ControllerSettings:
    if raw is None:
        return ControllerSettings()
    obj = ck.keys(raw, "controller", "controller")
    if obj is None:
        return ControllerSettings()
    d = ControllerSettings()
    c = "controller"
    settings = ControllerSettings(
        openflow_host=ck.ipv4(obj, "openflow_host", c, d.openflow_host) or d.openflow_host,
        openflow_port=ck.int_key(obj, "openflow_port", c, c) or d.openflow_port,
        api_host=ck.ipv4(obj, "api_host", c, d.api_host) or d.api_host,
        api_port=ck.int_key(obj, "api_port", c, c) or 0,
        audit_interval=ck.seconds_key(obj, "audit_interval", c, c),
        punt_rate=ck.int_key(obj, "punt_rate", c, c) or d.punt_rate,
        transition_time=ck.seconds_key(obj, "transition_time", c, c),
        probe_interface=ck.text(obj, "probe_interface", "controller", r"[A-Za-z0-9_.:@-]{1,15}",
                                "an interface name (1-15 characters)"),
        state_file=ck.text(obj, "state_file", "controller", r"/[^\0]*[^/]", "an absolute file path"),
        api_token_file=ck.text(obj, "api_token_file", "controller", r"/[^\0]*[^/]", "an absolute file path"),
        metrics_host=ck.ipv4(obj, "metrics_host", "controller", d.metrics_host) or d.metrics_host,
        metrics_port=ck.int_key(obj, "metrics_port", c, c) or 0,
        tls=_parse_tls(ck, obj.get("tls")),
        icmp_rate=ck.int_key(obj, "icmp_rate", c, c) or d.icmp_rate,
    )
    _check_listeners_apart(ck, settings)
    return settings


def _check_listeners_apart(ck: _Checker, settings: ControllerSettings) -> None:
    """The controller's three listeners need a port each wherever their addresses meet.

    Two on one port would not both bind, or worse, both would (the switches
    then talk OpenFlow to the REST API). Port 0 means any free port.
    """
    listeners = [(name, getattr(settings, f"{name}_host"), getattr(settings, f"{name}_port"))
                 for name in ("openflow", "api", "metrics")]
    for i, (name, host, port) in enumerate(listeners):
        for other, other_host, other_port in listeners[:i]:
            if port and port == other_port and (host == other_host or "0.0.0.0" in (host, other_host)):
                ck.fail(f"controller.{name}_port", f"{port} is also controller.{other}_port, on {host} and "
                        f"{other_host}: each listener needs a port of its own")


def _parse_tls(ck: _Checker, raw: Any) -> TlsSettings | None:
    if raw is None:
        return None
    obj = ck.keys(raw, "controller.tls", "controller.tls")
    if obj is None:
        return None
    paths = {k: ck.text(obj, k, "controller.tls", r"/[^\0]*[^/]", "an absolute file path")
             for k in ("privkey", "cert", "ca_cert")}
    return None if None in paths.values() else TlsSettings(**paths)


def _parse_health(ck: _Checker, raw: Any, path: str) -> HealthCheck | None:
    d = HealthCheck()
    if raw is None:
        return d
    h = "vips[].health"
    obj = ck.keys(raw, path, h)
    if obj is None:
        return None
    kind = obj.get("kind", d.kind)
    if kind not in HEALTH_KINDS:
        ck.fail(f"{path}.kind", f"{_r(kind)} is not one of {', '.join(HEALTH_KINDS)}")
        return None
    if kind != "http":
        for key in ("path", "expect_status"):
            if key in obj:
                ck.fail(f"{path}.{key}", f"{_r(obj[key])}: only for kind http (kind is {kind})")
                return None
    before = len(ck.problems)
    interval = ck.seconds_key(obj, "interval", path, h)
    timeout = ck.seconds_key(obj, "timeout", path, h)
    if len(ck.problems) == before and timeout > interval:
        ck.fail(f"{path}.timeout", f"{timeout:g} is longer than the interval {interval:g}")
    check = HealthCheck(
        kind=kind,
        port=ck.int_key(obj, "port", path, h),
        path=ck.text(obj, "path", path, r"/[\x21-\x7e]{0,255}", "a request path like /healthz") or d.path,
        expect_status=ck.int_key(obj, "expect_status", path, h) or d.expect_status,
        interval=interval, timeout=timeout,
        rise=ck.int_key(obj, "rise", path, h) or d.rise,
        fall=ck.int_key(obj, "fall", path, h) or d.fall,
    )
    return None if len(ck.problems) > before else check


def _parse_mux(ck: _Checker, raw: Any, path: str) -> Mux | None:
    m = "muxes[]"
    obj = ck.keys(raw, path, m)
    if obj is None:
        return None
    fields = dict(
        name=ck.name(obj, "name", path),
        dpid=ck.int_key(obj, "dpid", path, m),
        address=ck.ipv4(obj, "address", path, twin="address6"),
        mac=ck.mac(obj, "mac", path),
        uplink_port=ck.int_key(obj, "uplink_port", path, m),
        fabric_port=ck.int_key(obj, "fabric_port", path, m),
    )
    pins = {"pin_address": ck.ipv4(obj, "pin_address", path),
            "pin_cert_sha256": ck.text(obj, "pin_cert_sha256", path, r"(?:[0-9A-Fa-f]{2}:?){31}[0-9A-Fa-f]{2}",
                                       "a SHA-256 fingerprint (64 hex digits, colons allowed)")}
    if pins["pin_cert_sha256"]:
        pins["pin_cert_sha256"] = pins["pin_cert_sha256"].replace(":", "").lower()
    # Before the MUX's own checks, which return early: a bad speaker or address6 is named along with them.
    bgp = _parse_bgp(ck, obj.get("bgp"), f"{path}.bgp", fields) if "bgp" in obj else None
    address6 = ck.ipv6(obj, "address6", path)
    tag_space = ":".join(f"{b:02x}" for b in TAG_PREFIX)
    if fields["mac"] is not None and fields["mac"].startswith(tag_space):
        # Classifier tags (destination) and second-chance marks (source) live in 0a:4d:...
        ck.fail(f"{path}.mac", f"{fields['mac']} is in the tag MAC space {tag_space}:xx:xx:xx:xx")
        return None
    if fields["uplink_port"] is not None and fields["uplink_port"] == fields["fabric_port"]:
        ck.fail(f"{path}.fabric_port", f"{fields['fabric_port']} is also the uplink_port")
        return None
    if any(v is None for v in fields.values()) or any(k in obj and v is None for k, v in pins.items()):
        return None
    if "bgp" in obj and bgp is None or "address6" in obj and address6 is None:
        return None
    return Mux(**fields, **pins, bgp=bgp, address6=address6)


def _parse_bgp(ck: _Checker, raw: Any, path: str, mux: dict) -> BgpSpeaker | None:
    b = "muxes[].bgp"
    obj = ck.keys(raw, path, b)
    if obj is None:
        return None
    before = len(ck.problems)
    fields = dict(
        speaker_port=ck.int_key(obj, "speaker_port", path, b),
        address=ck.ipv4(obj, "address", path),
        mac=ck.mac(obj, "mac", path),
        peer=ck.ipv4(obj, "peer", path),
        asn=ck.int_key(obj, "asn", path, b),
        peer_asn=ck.int_key(obj, "peer_asn", path, b),
        hold_time=ck.int_key(obj, "hold_time", path, b),
        bfd_interval=ck.seconds_key(obj, "bfd_interval", path, b),
        bfd_multiplier=ck.int_key(obj, "bfd_multiplier", path, b),
        lease_time=ck.int_key(obj, "lease_time", path, b),
    )
    if len(ck.problems) > before or None in fields.values():
        return None
    for key in ("address", "peer"):
        ck.unicast_host(fields[key], f"{path}.{key}")
    for port in ("uplink_port", "fabric_port"):
        if fields["speaker_port"] == mux[port]:
            ck.fail(f"{path}.speaker_port", f"{fields['speaker_port']} is also the MUX's {port}")
    for key, value in (("address", mux["address"]), ("mac", mux["mac"]), ("peer", mux["address"])):
        if fields[key] == value:
            ck.fail(f"{path}.{key}", f"{value} is the MUX's own {'mac' if key == 'mac' else 'address'}")
    if fields["address"] == fields["peer"]:
        ck.fail(f"{path}.peer", f"{fields['peer']} is the speaker's own address")
    if fields["mac"].startswith(":".join(f"{x:02x}" for x in TAG_PREFIX)):
        ck.fail(f"{path}.mac", f"{fields['mac']} is in the tag MAC space")
    if fields["asn"] == fields["peer_asn"]:
        ck.fail(f"{path}.peer_asn", f"{fields['peer_asn']} is the speaker's own AS: the session is eBGP")
    return None if len(ck.problems) > before else BgpSpeaker(**fields)


def _slices(ck: _Checker, obj: dict, path: str, slice_bits: int) -> frozenset[int] | None:
    """``slices: [3, "8-11"]`` -> {3, 8, 9, 10, 11}, each within 0..2**slice_bits-1."""
    raw = obj.get("slices")
    if raw is None:
        return frozenset()
    top = (1 << slice_bits) - 1
    if not isinstance(raw, list) or not raw:
        ck.fail(f"{path}.slices", f"{_r(raw)} is not a non-empty list of slices or 'a-b' ranges")
        return None
    out: set[int] = set()
    for item in raw:
        m = re.match(r"^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$", str(item)) if not isinstance(item, bool) else None
        lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (None, None)
        if lo is None or not 0 <= lo <= hi <= top:
            ck.fail(f"{path}.slices", f"{_r(item)} is not a slice or range within 0..{top} (slice_bits={slice_bits})")
            return None
        out.update(range(lo, hi + 1))
    return frozenset(out)


def parse_dip(ck: _Checker, raw: Any, path: str, mode: str = "port", slice_bits: int = 8) -> Dip | None:
    uses_ports = mode in PORT_MODES
    sec = "vips[].dips[]"
    obj = ck.keys(raw, path, sec, mode)
    if obj is None:
        return None
    for_mode = ck.for_mode(obj, path, sec, mode)  # and go on: every other problem is named too
    dip_id = ck.int_key(obj, "id", path, sec)
    address = ck.ipv4(obj, "address", path, twin="address6")
    if address is not None and not ck.unicast_host(address, f"{path}.address"):
        address = None
    mac = ck.mac(obj, "mac", path)
    address6 = ck.ipv6(obj, "address6", path)
    state = obj.get("state", "active")
    if state not in ("active", "draining"):
        ck.fail(f"{path}.state", f"{_r(state)} is not one of active, draining")
        return None
    slices = _slices(ck, obj, path, slice_bits)
    ports = announce = None
    if uses_ports:
        ports = ck.port_range(obj, "ports", path)
        announce = ck.integer(obj, "announce_port", path, *schema.bounds(sec, "announce_port"),
                              ports.start if ports else None)
        if ports is not None and announce is not None and announce not in ports:
            ck.fail(f"{path}.announce_port", f"{announce} is outside the DIP's ports {ports}")
            return None
        if ports is None or announce is None:
            return None
    if None in (dip_id, address, mac, slices) or not for_mode or ("address6" in obj and address6 is None):
        return None
    weight = ck.int_key(obj, "weight", path, sec)
    if weight is None:
        return None
    return Dip(id=dip_id, address=address, mac=mac, ports=ports, announce_port=announce, state=state,
               slices=slices, weight=weight, address6=address6)


def check_vip_dips(ck: _Checker, dips: list[Dip], service_port: int, path: str) -> None:
    """Cross-DIP rules: unique ids/addresses/MACs, disjoint ranges and slices, no service port.

    Sorting and indexing keep this O(N log N): a VIP of thousands of DIPs is
    checked on every API change.
    """
    seen: dict[str, dict[Any, int]] = {"id": {}, "address": {}, "mac": {}, "address6": {}}
    slice_owner: dict[int, int] = {}
    for i, d in enumerate(dips):
        for key in seen:
            value = getattr(d, key)
            if value is None:
                continue
            if value in seen[key]:
                ck.fail(f"{path}[{i}].{key}", f"duplicate {key} {_r(value)} (also dips[{seen[key][value]}])")
            else:
                seen[key][value] = i
        if d.ports is not None and service_port in d.ports:
            ck.fail(f"{path}[{i}].ports", f"range {d.ports} contains the service port {service_port}")
        shared = sorted(s for s in d.slices if s in slice_owner)
        if shared:
            ck.fail(f"{path}[{i}].slices", f"slices {shared[:8]} are also owned by dips[{slice_owner[shared[0]]}]")
        for s in d.slices:
            slice_owner.setdefault(s, i)
    ranged = sorted((d.ports.start, i) for i, d in enumerate(dips) if d.ports is not None)
    reach, reach_i = 0, -1  # the furthest end among the ranges that start before this one
    for start, i in ranged:
        if reach_i >= 0 and start <= reach:
            j, k = sorted((i, reach_i))
            ck.fail(f"{path}[{k}].ports", f"range {dips[k].ports} overlaps dips[{j}].ports {dips[j].ports}")
        if dips[i].ports.end > reach:
            reach, reach_i = dips[i].ports.end, i


def check_dip_fits_vip(ck: _Checker, d: Dip, path: str, address: str | None, address6: str | None) -> None:
    """A DIP is not its VIP, has an IPv6 address if the VIP has one, and its MAC is outside the tag space."""
    if d.address == address:
        ck.fail(f"{path}.address", f"{d.address} is the VIP itself")
    if address6 is not None and d.address6 is None:
        ck.fail(f"{path}.address6", f"missing: the VIP has address6 {address6}, and second chance passes its "
                                    "IPv6 packets to DIPs by theirs")
    elif address6 is not None and d.address6 == address6:
        ck.fail(f"{path}.address6", f"{d.address6} is the VIP itself")
    if d.mac.startswith(":".join(f"{b:02x}" for b in TAG_PREFIX)):
        ck.fail(f"{path}.mac", f"{d.mac} is in the tag MAC space")


def check_slot_room(ck: _Checker, dips: list[Dip] | tuple[Dip, ...], slots: int, path: str) -> None:
    """More active DIPs than slots would leave some without new connections: refuse it."""
    active = sum(1 for d in dips if d.state == "active")
    if active > slots:
        ck.fail(f"{path}.slots", f"{slots} slots for {active} active DIPs: the DIPs beyond the slot count would "
                                 f"get no new connections (use hash: multipath, up to {MAX_MULTIPATH_SLOTS} slots)")


def assign_slices(dips: list[Dip], slice_bits: int) -> list[Dip]:
    """Default ownership when no DIP names its slices: equal contiguous blocks, by DIP id.

    Contiguous blocks compile to few masked matches. Slices left over when the
    count does not divide evenly stay unowned (their JOINs fall back to the hash).
    """
    ordered = sorted(dips, key=lambda d: d.id)
    block = (1 << slice_bits) // len(ordered)  # _parse_vip ensures at least one slice per DIP
    owned = {d.id: frozenset(range(k * block, (k + 1) * block)) for k, d in enumerate(ordered)}
    return [replace(d, slices=owned[d.id]) for d in dips]


def _parse_vip(ck: _Checker, raw: Any, path: str) -> Vip | None:
    sec = "vips[]"
    obj = ck.keys(raw, path, sec)
    if obj is None:
        return None
    name = ck.name(obj, "name", path)
    address = ck.ipv4(obj, "address", path, twin="address6")
    address6 = ck.ipv6(obj, "address6", path)
    port = ck.int_key(obj, "port", path, sec)
    mode = obj.get("mode", schema.default(sec, "mode"))
    if mode not in MODES:
        ck.fail(f"{path}.mode", f"{_r(mode)} is not one of {', '.join(MODES)}")
        return None
    served6 = address6 is not None and mode in TOKEN_MODES
    if address6 is not None and not served6:  # named, and the VIP's other problems with it
        ck.fail(f"{path}.address6", f"{address6}: port mode cannot serve IPv6: an IPv6 ADD_ADDR with a port (30 "
                                    "bytes) does not fit beside TCP timestamps (12) in 40 bytes of options, so the "
                                    "kernel drops it (MPTcpExtAddAddrTxDrop); use mode hybrid, which serves IPv6 "
                                    "clients by token (docs/ipv6.md)")
    key_source = obj.get("key_source", schema.default(sec, "key_source"))
    if key_source in RENAMED_KEY_SOURCES:
        ck.fail(f"{path}.key_source", f"{_r(key_source)} was renamed {_r(RENAMED_KEY_SOURCES[key_source])}")
        return None
    if key_source not in KEY_SOURCES:
        ck.fail(f"{path}.key_source", f"{_r(key_source)} is not one of {', '.join(KEY_SOURCES)}")
        return None
    if not ck.for_mode(obj, path, sec, mode):
        return None
    slice_bits = ck.int_key(obj, "slice_bits", path, sec)
    if slice_bits is None:
        return None
    seeded = mode in TOKEN_MODES and key_source == "seed"
    hash_method = obj.get("hash", "multipath" if seeded else "dp_hash")
    if hash_method not in HASH_METHODS:
        ck.fail(f"{path}.hash", f"{_r(hash_method)} is not one of {', '.join(HASH_METHODS)}")
        return None
    if seeded and hash_method != "multipath":
        ck.fail(f"{path}.hash", f"{_r(hash_method)}: key_source seed needs multipath, the hash the controller "
                                "can predict when it picks a DIP for a SYN")
        return None
    if hash_method == "dp_hash":
        # Fewer buckets than 256 would map OVS's power-of-two hash values onto them unevenly.
        slots = ck.integer(obj, "slots", path, DEFAULT_SLOTS, DEFAULT_SLOTS, DEFAULT_SLOTS)
    else:
        slots = ck.int_key(obj, "slots", path, sec)
    health = _parse_health(ck, obj.get("health"), f"{path}.health")
    if slots is None or health is None:
        return None
    if "punt_rate" in obj and not seeded:
        ck.fail(f"{path}.punt_rate", f"{_r(obj['punt_rate'])}: only for key_source seed")
        return None
    punt_rate = ck.int_key(obj, "punt_rate", path, sec)
    raw_dips = obj.get("dips")
    dips: list[Dip] = []
    if raw_dips is not None:
        if not isinstance(raw_dips, list) or not raw_dips:
            ck.fail(f"{path}.dips", f"expected a non-empty list, got {_r(raw_dips)}")
        else:
            parsed = [_named(ck, parse_dip, d, f"{path}.dips[{i}]", mode, slice_bits) for i, d in enumerate(raw_dips)]
            dips = [d for d in parsed if d is not None]
            if len(dips) == len(parsed) and mode in TOKEN_MODES:
                named = [bool(d.slices) for d in dips]
                if not any(named) and len(dips) > (1 << slice_bits):
                    ck.fail(f"{path}.slice_bits", f"{slice_bits} gives {1 << slice_bits} slices for {len(dips)} DIPs")
                elif not any(named):
                    dips = assign_slices(dips, slice_bits)
                elif not all(named):
                    missing = [i for i, n in enumerate(named) if not n]
                    ck.fail(f"{path}.dips[{missing[0]}].slices",
                            "missing: when any DIP names its slices, every DIP must")
            if len(dips) == len(parsed) and port is not None:
                check_vip_dips(ck, dips, port, f"{path}.dips")
                check_slot_room(ck, dips, slots, path)
            for i, d in enumerate(parsed):  # numbered as written, the DIPs that failed to parse included
                if d is not None:
                    check_dip_fits_vip(ck, d, f"{path}.dips[{i}]", address, address6)
            if dips and not any(d.state == "active" for d in dips):
                ck.fail(f"{path}.dips", "every DIP is draining: the VIP would refuse every new connection")
    if None in (name, address, port) or not dips or ("address6" in obj and not served6):
        return None
    return Vip(name=name, address=address, port=port, mode=mode, dips=tuple(dips), key_source=key_source,
               slice_bits=slice_bits, hash=hash_method, slots=slots, health=health, punt_rate=punt_rate,
               address6=address6)


def _named(ck: _Checker, parse, raw: Any, path: str, *args):
    """``parse(ck, raw, path, *args)``, which must name a problem whenever it gives nothing back.

    A parser that returned None silently would drop its MUX, VIP or DIP from
    the config without a word: that is reported here, as the entry at ``path``.
    """
    before = len(ck.problems)
    item = parse(ck, raw, path, *args)
    if item is None and len(ck.problems) == before:
        ck.fail(path, f"not valid: {_r(raw)}")
    return item


def _parse_list(ck: _Checker, raw: dict, key: str, parse) -> list:
    items = raw.get(key)
    if items is None:
        return []
    if not isinstance(items, list) or not items:
        ck.fail(key, f"expected a non-empty list, got {_r(items)}")
        return []
    return [_named(ck, parse, item, f"{key}[{i}]") for i, item in enumerate(items)]


def _check_unique(ck: _Checker, items: list, key: str, what: str) -> None:
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = getattr(item, key)
        if value is None:  # an optional key left out
            continue
        if value in seen:
            ck.fail(f"{what}[{i}].{key}", f"duplicate {key} {_r(value)} (also {what}[{seen[value]}])")
        seen.setdefault(value, i)


def _mux_addresses(muxes) -> dict[str, str]:
    """Every MUX's own addresses, each with the key that names it."""
    return {a: f"muxes[{i}].{k}" for i, m in enumerate(muxes) if m is not None
            for k, a in (("address", m.address), ("address6", m.address6)) if a is not None}


def _check_not_a_mux(ck: _Checker, d: Dip, path: str, mux_addresses: dict[str, str]) -> None:
    for key in ("address", "address6"):
        if getattr(d, key) in mux_addresses:
            ck.fail(f"{path}.{key}", f"{getattr(d, key)} is also {mux_addresses[getattr(d, key)]}")


def _check_speakers(ck: _Checker, muxes: list[Mux], vips: list[Vip]) -> None:
    """BGP speakers' addresses and MACs are theirs alone: no MUX's, VIP's, DIP's or other speaker's."""
    addresses = {m.address: f"muxes[{i}].address" for i, m in enumerate(muxes)}
    macs = {m.mac: f"muxes[{i}].mac" for i, m in enumerate(muxes)}
    for v in vips:
        addresses[v.address] = f"vips[{v.name}].address"
        macs.update({d.mac: f"vips[{v.name}].dips[{d.id}].mac" for d in v.dips})
    for i, m in enumerate(muxes):
        if m.bgp is None:
            continue
        path = f"muxes[{i}].bgp"
        for key, value, taken in (("address", m.bgp.address, addresses), ("mac", m.bgp.mac, macs)):
            if value in taken:
                ck.fail(f"{path}.{key}", f"{value} is also {taken[value]}")
            taken[value] = f"{path}.{key}"
        if any(m.bgp.peer == v.address for v in vips):
            ck.fail(f"{path}.peer", f"{m.bgp.peer} is a VIP")


def parse_config(raw: Any) -> Config:
    """Validate a parsed YAML document; raise ConfigError naming every problem."""
    ck = _Checker()
    if ck.keys(raw, "", "") is None:
        raise ConfigError(ck.problems)
    controller = _parse_controller(ck, raw.get("controller"))
    muxes = _parse_list(ck, raw, "muxes", _parse_mux)
    vips = _parse_list(ck, raw, "vips", _parse_vip)
    if None not in muxes:
        for key in ("name", "dpid", "address", "mac", "address6"):
            _check_unique(ck, muxes, key, "muxes")
    if None not in vips:
        for key in ("name", "address", "address6"):
            _check_unique(ck, vips, key, "vips")
        mux_addresses = _mux_addresses(muxes)
        for i, v in enumerate(vips):
            for key in ("address", "address6"):
                if getattr(v, key) in mux_addresses:
                    ck.fail(f"vips[{i}].{key}", f"{getattr(v, key)} is also {mux_addresses[getattr(v, key)]}")
            for j, d in enumerate(v.dips):
                _check_not_a_mux(ck, d, f"vips[{i}].dips[{j}]", mux_addresses)
        _check_speakers(ck, [m for m in muxes if m is not None], vips)
        served6 = [i for i, v in enumerate(vips) if v.address6 is not None]
        for i, m in enumerate(muxes):
            if served6 and m is not None and m.address6 is None:
                ck.fail(f"muxes[{i}].address6", f"missing: vips[{served6[0]}] has address6, and the router "
                                                "reaches it through each MUX's own IPv6 address")
        speakers = [i for i, m in enumerate(muxes) if m is not None and m.bgp is not None]
        for i in served6 if speakers else []:
            ck.fail(f"vips[{i}].address6", f"{vips[i].address6}: muxes[{speakers[0]}].bgp announces IPv4 VIPs "
                                           "only, so the router would never learn this address (docs/ipv6.md)")
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
    except ValueError as e:  # a number too long for Python to read (over 4300 digits)
        raise ConfigError([f"{path}: a value YAML cannot read: {e}"]) from e
    return parse_config(raw)


def validated_dip(vip: Vip, raw: Any) -> Dip:
    """Validate a DIP to be added to ``vip`` at run time against the others."""
    ck = _Checker()
    dip = _named(ck, parse_dip, raw, "dip", vip.mode, vip.slice_bits)
    if dip is not None and vip.uses_tokens and not dip.slices:
        owned = set().union(*(d.slices for d in vip.dips))
        free = sorted(set(range(1 << vip.slice_bits)) - owned)
        ck.fail("dip.slices", f"required for a {vip.mode}-mode VIP; free slices: {free[:16] or 'none'}")
    if dip is not None:
        check_dip_fits_vip(ck, dip, "dip", vip.address, vip.address6)
        check_vip_dips(ck, [*vip.dips, dip], vip.port, f"vips[{vip.name}].dips")
        check_slot_room(ck, [*vip.dips, dip], vip.slots, f"vips[{vip.name}]")
    if ck.problems:
        raise ConfigError(ck.problems)
    return dip


def with_dip_added(config: Config, vip_name: str, raw: Any) -> Config:
    """A new config with a DIP added to a VIP, validated against its peers."""
    vip = config.vip(vip_name)
    dip = validated_dip(vip, raw)
    ck = _Checker()
    _check_not_a_mux(ck, dip, "dip", _mux_addresses(config.muxes))
    if ck.problems:
        raise ConfigError(ck.problems)
    return config.with_vip(replace(vip, dips=(*vip.dips, dip)))


def with_dip_state(config: Config, vip_name: str, dip_id: int, state: str) -> Config:
    """A new config with one DIP set to ``active`` or ``draining``."""
    if state not in ("active", "draining"):
        raise ConfigError([f"state: {_r(state)} is not one of active, draining"])
    vip = config.vip(vip_name)
    vip.dip(dip_id)  # KeyError if absent
    dips = tuple(replace(d, state=state) if d.id == dip_id else d for d in vip.dips)
    _require_active(vip, dips, f"cannot drain DIP {dip_id}")
    ck = _Checker()
    check_slot_room(ck, dips, vip.slots, f"vips[{vip.name}]")
    if ck.problems:
        raise ConfigError(ck.problems)
    return config.with_vip(replace(vip, dips=dips))


def _require_active(vip: Vip, dips: tuple[Dip, ...], what: str) -> None:
    """A VIP with no active DIP would blackhole every new connection: refuse it."""
    if not any(d.state == "active" for d in dips):
        raise ConfigError([f"vips[{vip.name}].dips: {what}: no active DIP would be left"])


def with_dip_removed(config: Config, vip_name: str, dip_id: int) -> Config:
    """A new config without a DIP; a VIP keeps at least one DIP."""
    vip = config.vip(vip_name)
    vip.dip(dip_id)
    dips = tuple(d for d in vip.dips if d.id != dip_id)
    if not dips:
        raise ConfigError([f"vips[{vip.name}].dips: cannot remove the last DIP ({dip_id})"])
    _require_active(vip, dips, f"cannot remove DIP {dip_id}")
    return config.with_vip(replace(vip, dips=dips))


def dump_dip(d: Dip) -> dict:
    """A DIP as a config entry: ``parse_dip`` reads it back to the same DIP."""
    out = {"id": d.id, "address": d.address, "mac": d.mac, "state": d.state}
    if d.ports is not None:
        out.update(ports=str(d.ports), announce_port=d.announce_port)
    if d.slices:
        out["slices"] = sorted(d.slices)
    if d.weight != 1:
        out["weight"] = d.weight
    if d.address6 is not None:
        out["address6"] = d.address6
    return out


# --------------------------------------------------------------------------
# runtime changes on top of the YAML file (the controller's state file)


def runtime_changes(base: Config, current: Config) -> dict:
    """What the API changed on top of ``base``, per VIP: DIPs removed, added (or replaced), and states.

    ``with_runtime_changes(base, runtime_changes(base, current))`` gives
    ``current`` back. Kept as differences, not as a copy, so the YAML file
    stays the base: an operator who edits it and restarts sees the edit.
    """
    out = {}
    for vip in current.vips:
        try:
            was = {d.id: d for d in base.vip(vip.name).dips}
        except KeyError:
            continue
        now = {d.id: d for d in vip.dips}
        removed = sorted(i for i in was if i not in now or replace(now[i], state=was[i].state) != was[i])
        added = [dump_dip(d) for i, d in now.items() if i in removed or i not in was]
        states = {str(i): d.state for i, d in now.items() if i in was and i not in removed and d.state != was[i].state}
        if removed or added or states:
            out[vip.name] = {"removed": removed, "added": added, "states": states}
    return out


def with_runtime_changes(base: Config, changes: Any, source: str = "state") -> Config:
    """``base`` with ``runtime_changes`` applied and the whole result validated; ConfigError names ``source``."""
    if not isinstance(changes, dict):
        raise ConfigError([f"{source}: expected a mapping of VIP names, got {_r(changes)}"])
    config = base
    problems = []
    for name, change in changes.items():
        path = f"{source}.{name}"
        try:
            vip = config.vip(name)
        except KeyError:
            problems.append(f"{path}: no VIP {_r(name)} in the config any more; its runtime changes are dropped")
            continue
        if not isinstance(change, dict) or set(change) - {"removed", "added", "states"}:
            problems.append(f"{path}: expected removed, added and states, got {_r(change)}")
            continue
        removed = set(change.get("removed") or ())
        states = change.get("states") or {}
        ck = _Checker()
        added = {d.id: d for d in (parse_dip(ck, raw, f"{path}.added[{i}]", vip.mode, vip.slice_bits)
                                   for i, raw in enumerate(change.get("added") or ())) if d is not None}
        # In the YAML's order, a replaced DIP where it was, new ones after.
        dips = [added.pop(d.id, None) if d.id in removed else d for d in vip.dips]
        dips = [d for d in dips if d is not None] + list(added.values())
        ids = {d.id for d in dips}
        for key, state in states.items():
            if not re.fullmatch(r"\d{1,4}", str(key)) or int(key) not in ids or state not in ("active", "draining"):
                ck.fail(f"{path}.states.{key}", f"{_r(state)} is not a state of a DIP of {name}")
        dips = [replace(d, state=states.get(str(d.id), d.state)) for d in dips]
        check_vip_dips(ck, dips, vip.port, f"{path}.dips")
        check_slot_room(ck, dips, vip.slots, path)
        if not any(d.state == "active" for d in dips):
            ck.fail(f"{path}.dips", "no active DIP would be left")
        problems += ck.problems
        if not ck.problems:
            config = config.with_vip(replace(vip, dips=tuple(dips)))
    if problems:
        raise ConfigError(problems)
    return config


__all__ = ["Config", "ConfigError", "ControllerSettings", "TlsSettings", "Dip", "HealthCheck", "Mux", "PortRange", "Vip",
           "load_config", "parse_config", "validated_dip", "dump_dip",
           "with_dip_added", "with_dip_state", "with_dip_removed", "runtime_changes", "with_runtime_changes"]
