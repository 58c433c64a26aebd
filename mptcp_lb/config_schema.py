"""Every key of the YAML config, once: what it takes, its default and bounds, and what it means.

``mptcp_lb.config`` takes its allowed keys, required keys, bounds and
defaults from here, and ``reference()`` renders the operator's reference
(``docs/config.md``, ``mptcp-lb config-reference``) from the same table, so
the two cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mptcp_lb.mptcp_codec import MAX_SLICE_BITS, SERVER_ID_MASK

MODES = ("port", "token", "hybrid")
PORT_MODES = ("port", "hybrid")  # DIPs own port ranges and announce one port
TOKEN_MODES = ("token", "hybrid")  # DIPs own token slices and stamp timestamps

REQUIRED = object()  # a key without a default


@dataclass(frozen=True)
class Key:
    name: str
    kind: str  # what a value is, as the reference shows it
    meaning: str
    default: Any = None  # None: unset; REQUIRED: must be given
    bounds: tuple[float, float] | None = None  # an integer's or number's inclusive range
    modes: tuple[str, ...] = MODES  # the VIP modes it belongs to (vips[] and dips[] keys)
    required_in: tuple[str, ...] = ()  # modes in which it must be given (without a default)

    def required(self, mode: str | None = None) -> bool:
        return self.default is REQUIRED or (mode is not None and mode in self.required_in)


def _section(*keys: Key) -> dict[str, Key]:
    return {k.name: k for k in keys}


ADDRESS = "IPv4 address"
ADDRESS6 = "IPv6 address"
PATH = "absolute file path"

SECTIONS: dict[str, dict[str, Key]] = {
    "": _section(
        Key("controller", "mapping", "The controller's own settings (all optional)."),
        Key("muxes", "list of mappings", "The MUX bridges this controller programs.", REQUIRED),
        Key("vips", "list of mappings", "The services and their DIPs.", REQUIRED),
    ),
    "controller": _section(
        Key("openflow_host", ADDRESS, "Where the OpenFlow listener binds.", "127.0.0.1"),
        Key("openflow_port", "integer", "The OpenFlow listener's port.", 6653, (1, 65535)),
        Key("api_host", ADDRESS, "Where the REST API binds: **loopback** by default.", "127.0.0.1"),
        Key("api_port", "integer", "The REST API's port (0: any free port).", 8080, (0, 65535)),
        Key("api_token_file", PATH, "The file holding the API's bearer token (`mptcp-lb api-token FILE` writes "
            "one). The controller refuses to start without it, or if others may read it."),
        Key("metrics_host", ADDRESS, "Where the read-only Prometheus listener (`GET /metrics` and nothing else) "
            "binds.", "127.0.0.1"),
        Key("metrics_port", "integer", "The Prometheus listener's port (0: any free port).", 9180, (0, 65535)),
        Key("tls", "mapping", "OpenFlow over TLS: only switches with a certificate from `ca_cert` may connect. "
            "Unset: plain TCP."),
        Key("audit_interval", "seconds", "Between audits of every MUX (and stats polls).", 2.0, (0.1, 3600)),
        Key("punt_rate", "integer", "The default punt budget of a seed-mode VIP: SYN + MP_CAPABLE per second per "
            "MUX.", 100, (1, 1_000_000)),
        Key("icmp_rate", "integer", "ICMP \"fragmentation needed\" messages to a VIP that a MUX copies to the "
            "VIP's DIPs, per second per MUX (an OpenFlow meter).", 100, (1, 100_000)),
        Key("transition_time", "seconds", "How long a moved slot gives its connections a second chance at their "
            "old DIP (0 turns second chance off).", 300.0, (0, 86400)),
        Key("probe_interface", "interface name", "The controller host's interface on the DIPs' L2 network, where "
            "health probes leave. Unset: no health checks (a warning says so)."),
        Key("state_file", PATH, "Where the runtime state (drains, additions, health, transitions) lives; a "
            "restart carries on from it. Unset: nowhere."),
    ),
    "controller.tls": _section(
        Key("privkey", PATH, "The controller's private key (PEM).", REQUIRED),
        Key("cert", PATH, "The controller's certificate (PEM).", REQUIRED),
        Key("ca_cert", PATH, "The CA the switches' certificates must come from (PEM).", REQUIRED),
    ),
    "muxes[]": _section(
        Key("name", "name", "The MUX (1-32 letters, digits, `_`, `.`, `-`); unique.", REQUIRED),
        Key("dpid", "integer", "Its bridge's datapath ID; bridges with other DPIDs are left alone.", REQUIRED,
            (1, 2**64 - 1)),
        Key("address", ADDRESS, "The MUX's own IP: the border router's next hop for the VIPs. ARP for it is "
            "answered by flows.", REQUIRED),
        Key("address6", ADDRESS6, "The MUX's own IPv6 address: the border router's next hop for the VIPs' "
            "`address6`. Neighbour discovery for it is answered by flows. Required when a VIP has `address6`."),
        Key("mac", "MAC address", "The MUX's own MAC (unicast, outside the tag space `0a:4d:...`).", REQUIRED),
        Key("uplink_port", "integer", "The OpenFlow port towards the router. VIP, tag and ARP flows match it, so "
            "nothing on the fabric side can reach a VIP through a MUX.", REQUIRED, (1, 0xFFFFFF00)),
        Key("fabric_port", "integer", "The OpenFlow port towards the DIPs.", REQUIRED, (1, 0xFFFFFF00)),
        Key("pin_address", ADDRESS, "Only an OpenFlow connection from this address may claim the dpid."),
        Key("pin_cert_sha256", "SHA-256 fingerprint", "Only a switch with this certificate (`ovs-pki "
            "fingerprint`) may claim the dpid. A second connection for a connected dpid is always refused."),
        Key("bgp", "mapping", "The MUX's BGP speaker (docs/bgp.md): a BIRD 2 on a port of this bridge that "
            "announces the VIPs with this MUX's `address` as next hop. Its session runs through flows the "
            "controller leases, so the VIPs are withdrawn when the bridge stops forwarding or loses the "
            "controller. Unset: the router's route to the MUXes is configured by hand."),
    ),
    "muxes[].bgp": _section(
        Key("speaker_port", "integer", "The OpenFlow port of the speaker's interface on this bridge.", REQUIRED,
            (1, 0xFFFFFF00)),
        Key("address", ADDRESS, "The speaker's own address, on the uplink's network (not the MUX's).", REQUIRED),
        Key("mac", "MAC address", "The speaker interface's MAC (unicast, not the MUX's, outside the tag space).",
            REQUIRED),
        Key("peer", ADDRESS, "The router's address on the uplink's network: the BGP neighbour.", REQUIRED),
        Key("asn", "integer", "The speaker's AS number.", REQUIRED, (1, 2**32 - 1)),
        Key("peer_asn", "integer", "The router's AS number (another AS: eBGP).", REQUIRED, (1, 2**32 - 1)),
        Key("hold_time", "integer", "The BGP hold time in seconds, the fallback when BFD is not running.", 3,
            (3, 65535)),
        Key("bfd_interval", "seconds", "BFD's transmit and receive interval; a session is down after "
            "`bfd_multiplier` of them without a packet.", 0.1, (0.01, 10)),
        Key("bfd_multiplier", "integer", "BFD's detection multiplier.", 3, (1, 255)),
        Key("lease_time", "integer", "Seconds the speaker's flows outlive the controller's last renewal (it "
            "renews them every 0.5 s): a MUX cut off from its controller is withdrawn this long, plus BFD's "
            "detection time, after; one whose datapath stops is withdrawn by BFD alone. One controller leases "
            "every MUX's flows, so a controller away for longer withdraws every MUX and the VIPs with them: the "
            "default rides out a restart (systemd's 2 s, OVS's reconnection backoff of up to 8 s, start-up).",
            30, (2, 3600)),
    ),
    "vips[]": _section(
        Key("name", "name", "The service (1-32 letters, digits, `_`, `.`, `-`); unique.", REQUIRED),
        Key("address", ADDRESS, "The VIP; unique, and no MUX's address.", REQUIRED),
        Key("address6", ADDRESS6, "The VIP's IPv6 address, served beside `address` by the same DIPs, slots and "
            "token slices (docs/ipv6.md). Token and hybrid modes only: an IPv6 ADD_ADDR with a port does not fit "
            "beside TCP timestamps, so port mode cannot announce over IPv6 (hybrid serves IPv6 clients by token). "
            "Every MUX and every DIP of the VIP then needs its `address6`."),
        Key("port", "integer", "The service port.", REQUIRED, (1, 65535)),
        Key("dips", "list of mappings", "The VIP's backends; at least one of them active.", REQUIRED),
        Key("mode", "`port`, `token` or `hybrid`", "The steering scheme.", "port"),
        Key("hash", "`dp_hash` or `multipath`", "How packets without steering information are hashed. `dp_hash` "
            "uses an OVS select group (megaflows do not grow per connection); `multipath` a plain flow whose "
            "choice the controller can predict, required by seed mode (then also the default). MUX hosts must "
            "agree on the hash: on the kernel datapath use `multipath` (docs/operating.md).", "dp_hash"),
        Key("slots", "integer", "The slot table's size: exactly 256 with `dp_hash` (the most OVS 3.1 keeps "
            "stable), 1..4096 with `multipath`. No more active DIPs than slots.", 256, (1, 4096)),
        Key("health", "mapping", "How the controller probes the DIPs (defaults: TCP connect every 0.5 s)."),
        Key("key_source", "`seed` or `pool`", "Who makes a connection's key: the controller seeds it through the "
            "MUX, or each DIP keys it from its own pool.", "seed", modes=TOKEN_MODES),
        Key("slice_bits", "integer", "The token slice is the token's top bits.", 8, (1, MAX_SLICE_BITS),
            modes=TOKEN_MODES),
        Key("punt_rate", "integer", "Seed mode: this VIP's punt budget, SYN + MP_CAPABLE per second per MUX "
            "(default `controller.punt_rate`).", None, (1, 1_000_000), modes=TOKEN_MODES),
    ),
    "vips[].health": _section(
        Key("kind", "`tcp`, `http` or `none`", "A TCP connect, an HTTP GET, or no probing.", "tcp"),
        Key("port", "integer", "The port probed (default: the service port).", None, (1, 65535)),
        Key("path", "request path", "http only: the path requested.", "/"),
        Key("expect_status", "integer", "http only: the status a healthy DIP answers with.", 200, (100, 599)),
        Key("interval", "seconds", "Between probes of one DIP.", 0.5, (0.05, 3600)),
        Key("timeout", "seconds", "A probe's time limit (at most the interval).", 0.5, (0.01, 3600)),
        Key("rise", "integer", "Successes in a row that bring a down DIP back.", 2, (1, 100)),
        Key("fall", "integer", "Failures in a row that take a DIP down.", 3, (1, 100)),
    ),
    "vips[].dips[]": _section(
        Key("id", "integer", "Server ID: the 12 bits stamped into TSval in the token modes; unique.", REQUIRED,
            (1, SERVER_ID_MASK)),
        Key("address", ADDRESS, "Identifies the DIP; unique, a unicast host address, not the VIP.", REQUIRED),
        Key("address6", ADDRESS6, "The DIP's IPv6 address on the fabric; unique. Required when the VIP has "
            "`address6`: second chance passes a moved slot's IPv6 packets on to it."),
        Key("mac", "MAC address", "How a MUX reaches the DIP: its fabric MAC; unique.", REQUIRED),
        Key("ports", "range `start-end`", "The DIP's own port range. Ranges may not overlap or contain the "
            "service port.", modes=PORT_MODES, required_in=PORT_MODES),
        Key("announce_port", "integer", "The port the DIP announces in ADD_ADDR (default: the range start).",
            None, (1, 65535), modes=PORT_MODES),
        Key("slices", "list of slices and `a-b` ranges", "The token slices the DIP owns. If no DIP names its "
            "slices, equal contiguous blocks are assigned by id; a DIP added at run time needs free ones.",
            modes=TOKEN_MODES),
        Key("state", "`active` or `draining`", "A draining DIP takes no new connections and keeps its own.",
            "active"),
        Key("weight", "integer", "Its share of the slots, relative to the other DIPs'.", 1, (1, 1000)),
    ),
}


def key(section: str, name: str) -> Key:
    return SECTIONS[section][name]


def allowed(section: str, mode: str | None = None) -> tuple[set[str], set[str]]:
    """The (required, optional) keys of a section, the required ones those of ``mode``.

    Keys of other modes stay allowed here, so that the validator can say which modes they belong to.
    """
    keys = SECTIONS[section].values()
    required = {k.name for k in keys if k.required(mode)}
    return required, {k.name for k in keys} - required


def default(section: str, name: str) -> Any:
    value = key(section, name).default
    return None if value is REQUIRED else value


def bounds(section: str, name: str) -> tuple:
    lo_hi = key(section, name).bounds
    assert lo_hi is not None, f"{section}.{name} has no bounds"
    return lo_hi


def _number(value: float) -> str:
    return f"{value:,}".replace(",", "_") if isinstance(value, int) and value >= 100_000 else f"{value:g}"


def reference() -> str:
    """The configuration reference in Markdown (docs/config.md)."""
    lines = ["# Configuration reference", "",
             "Generated from `mptcp_lb/config_schema.py` by `mptcp-lb config-reference`; the validator reads the "
             "same table. One YAML file holds everything and is validated up front (`mptcp-lb check-config FILE`): "
             "either all of it is valid or nothing is applied, and every problem is named by its key path.", ""]
    for section, keys in SECTIONS.items():
        lines += [f"## `{section}`" if section else "## top level", "",
                  "| key | takes | default | meaning |", "|---|---|---|---|"]
        for k in keys.values():
            takes = k.kind + (f", {_number(k.bounds[0])}..{_number(k.bounds[1])}" if k.bounds else "")
            if k.required_in:
                dflt = f"required in {', '.join(k.required_in)}"
            elif k.default is REQUIRED:
                dflt = "required"
            elif k.default is None:
                dflt = "unset"
            else:
                dflt = f"`{k.default}`"
            only = "" if k.modes == MODES else f" Modes {', '.join(k.modes)} only."
            lines.append(f"| `{k.name}` | {takes} | {dflt} | {k.meaning}{only} |")
        lines.append("")
    return "\n".join(lines)
