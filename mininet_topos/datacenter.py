"""The datacenter shape the demo and the integration tests run on.

    clients c1, c2 ==(2 paths each)== border router r0 ==ECMP(L4 hash)==> mux1, mux2 (OVS, OpenFlow)
                                                                   |
    DIPs d1..dN <== fabric fab (OVS, plain L2) <====================+
         |                                   ^
         +--- direct server return: d* -> fab -> r0 -> c1

All switches use the OVS userspace datapath (there is no OVS kernel module
here), so every host interface has TX checksum offload turned off: without
that, ping works but every TCP SYN is silently lost (``tune_interfaces``
also moves their receive processing off the PMD thread's core, and gives those
facing OVS GRO, as a NIC would). Every OVS port is of one
``port_type`` (``mptcp_lb.datapath``): ``afxdp`` by default where the kernel
and OVS support it, ``system`` (AF_PACKET) as the fallback.

With ``ipv6`` the topology is dual-stack: every host, the router and each
MUX get an IPv6 address beside their IPv4 one (``*_NETS6``), and the VIP
``VIP6`` is routed over both MUXes as ``VIP`` is.

Usable with Mininet's CLI (the third argument is the port type, optional):
    mn --custom mininet_topos/datacenter.py --topo datacenter,3,afxdp \
       --switch ovs,datapath=user --controller remote,port=6653
(``mn`` builds the MUXes with ``failMode=secure``; the controller programs them.)
"""

from __future__ import annotations

from mininet.node import Host, OVSBridge, OVSSwitch, Switch
from mininet.topo import Topo

from mptcp_lb.config import DEFAULT_SLICE_BITS
from mptcp_lb.datapath import parse_cpu_mask, port_options, resolve_port_type

VIP = "10.0.0.100"
SERVICE_PORT = 80
CLIENT_NETS = {  # one /24 per client path
    "c1": ("10.0.1", "10.0.2"),  # follows ADD_ADDR, respects the C flag (port-based steering)
    "c2": ("10.0.3", "10.0.4"),  # stock Linux: joins the VIP's service port (token-based steering)
}
MUX_NETS = ("10.1.1", "10.1.2")  # router <-> mux link nets; .1 is the MUX, .254 the router
FABRIC_NET = "10.2.0"  # DIPs are .1..N, the controller's management port .250, the router .254
MGMT_ADDRESS = f"{FABRIC_NET}.250"
# Dual-stack (``ipv6=True``): the same nets as /64s. Hosts are ::1 on client nets, the MUX ::1 on its
# link net, DIP i is ::i on the fabric; the router is ::fe everywhere.
VIP6 = "fd00:10::100"
CLIENT_NETS6 = {"c1": ("fd00:10:1", "fd00:10:2"), "c2": ("fd00:10:3", "fd00:10:4")}
MUX_NETS6 = ("fd00:11:1", "fd00:11:2")
FABRIC_NET6 = "fd00:12"
ROUTER6 = "fe"
# BGP (``bgp=True``): each MUX's speaker is .2 on its link net, on port 3 of its bridge.
ROUTER_ASN, MUX_ASN = 65000, 65001
SPEAKER_PORT = 3


def mux_address(i: int) -> str:
    """MUX i's own address (1 or 2): the router's next hop through it."""
    return f"{MUX_NETS[i - 1]}.1"


def mux_address6(i: int) -> str:
    """MUX i's own IPv6 address: the router's next hop through it for ``VIP6``."""
    return f"{MUX_NETS6[i - 1]}::1"


def dip_address6(i: int) -> str:
    return f"{FABRIC_NET6}::{i:x}"


def speaker_address(i: int) -> str:
    return f"{MUX_NETS[i - 1]}.2"


def speaker_mac(i: int) -> str:
    return f"02:00:00:01:01:{i:02x}"


def dip_mac(i: int) -> str:
    return f"02:00:00:02:{i >> 8:02x}:{i & 0xff:02x}"


def mux_mac(i: int) -> str:
    return f"02:00:00:01:00:{i:02x}"


def dip_port_ranges(n_dips: int) -> list[tuple[int, int]]:
    """Equal power-of-two port blocks, one per DIP, above the service port.

    Power-of-two aligned blocks compile to a single masked match each.
    """
    if not 1 <= n_dips <= 60:
        raise ValueError(f"--dips {n_dips}: the demo topology supports 1..60 DIPs")
    size = 4096
    while size * (n_dips + 1) > 65536:
        size //= 2
    return [(size * i, size * (i + 1) - 1) for i in range(1, n_dips + 1)]


def mgmt_interface(prefix: str = "") -> str:
    """The controller's management port on the fabric (in the root namespace), where health probes leave."""
    return f"{prefix}mgmt-eth0"


def topology_config(n_dips: int, of_port: int = 6653, api_port: int = 8080, mode: str = "port",
                    key_source: str = "seed", punt_rate: int = 100, prefix: str = "",
                    state_file: str | None = None, transition_time: float = 300.0,
                    explicit_slices: bool = False, api_token_file: str | None = None,
                    metrics_port: int = 9180, bgp: bool = False, bgp_lease_time: int | None = None,
                    ipv6: bool = False) -> dict:
    """The mptcp-lb config (as a YAML-ready dict) matching this topology.

    ``ipv6`` makes the VIP dual-stack: ``VIP6`` as its ``address6``, and every
    MUX's and DIP's IPv6 address beside its IPv4 one.

    ``bgp`` gives each MUX its BGP speaker (``muxes[].bgp``), as ``DatacenterTopo(bgp=True)`` wires them,
    with ``bgp_lease_time`` as their ``lease_time`` (None: the default).

    ``explicit_slices`` writes each DIP's token slices out (equal blocks by
    id, what validation assigns anyway), so a config that leaves some DIPs
    out for now (``Datacenter(spare_dips=...)``) keeps the same slices.
    """
    vip = {"name": "web", "address": VIP, "port": SERVICE_PORT, "mode": mode}
    if mode != "port":
        vip["key_source"] = key_source
    ranges = dip_port_ranges(n_dips)
    vip["dips"] = [{"id": i, "address": f"{FABRIC_NET}.{i}", "mac": dip_mac(i),
                    **({"address6": dip_address6(i)} if ipv6 else {})} for i in range(1, n_dips + 1)]
    if ipv6:
        vip["address6"] = VIP6
    if mode != "token":
        for d, (lo, hi) in zip(vip["dips"], ranges):
            d["ports"] = f"{lo}-{hi}"
    if mode != "port" and explicit_slices:
        block = (1 << DEFAULT_SLICE_BITS) // n_dips
        for k, d in enumerate(vip["dips"]):
            d["slices"] = [f"{k * block}-{(k + 1) * block - 1}"]
    return {
        "controller": {"openflow_host": "127.0.0.1", "openflow_port": of_port,
                       "api_host": "127.0.0.1", "api_port": api_port, "audit_interval": 1.0,
                       "punt_rate": punt_rate, "probe_interface": mgmt_interface(prefix),
                       "transition_time": transition_time, "metrics_port": metrics_port,
                       **({"state_file": state_file} if state_file else {}),
                       **({"api_token_file": api_token_file} if api_token_file else {})},
        "muxes": [
            {"name": f"mux{i}", "dpid": 0x1000 + i, "address": mux_address(i),
             **({"address6": mux_address6(i)} if ipv6 else {}),
             "mac": mux_mac(i), "uplink_port": 1, "fabric_port": 2,
             **({"bgp": {"speaker_port": SPEAKER_PORT, "address": speaker_address(i), "mac": speaker_mac(i),
                         "peer": f"{MUX_NETS[i - 1]}.254", "asn": MUX_ASN, "peer_asn": ROUTER_ASN,
                         **({"lease_time": bgp_lease_time} if bgp_lease_time else {})}} if bgp else {})}
            for i in (1, 2)
        ],
        "vips": [vip],
    }


def _faces_a_switch(intf) -> bool:
    link = intf.link
    if link is None:
        return False
    peer = link.intf2 if link.intf1 is intf else link.intf1
    return isinstance(peer.node, Switch)


def tune_interfaces(host: Host, rps_cpus: int = 0) -> None:
    """Make the host's veths behave like NICs in front of the userspace datapath.

    - TX checksum offload off: OVS's netdev datapath never completes a
      partial checksum, so without this every TCP SYN is lost.
    - Receive processing on ``rps_cpus`` (RPS; 0 leaves it where it is): a
      real host's NIC queue is processed by that host, but a veth processes
      what OVS's PMD thread transmits inside that very thread, so the PMD
      would end up running every receiver's TCP stack on its own core.
      ``Datacenter`` passes the CPUs other than the PMD's
      (``mptcp_lb.datapath.place_pmd``).
    - GRO on the interfaces that face an OVS port, so what the PMD sends in
      a batch climbs the stack once. Not on host-to-host links: GRO gives a
      veth a 256-frame ring that drops when its reader falls behind, where a
      veth without it queues in the CPU's backlog.
    """
    for intf in host.intfList():
        if intf.name == "lo":
            continue
        host.cmd("ethtool -K", intf.name, "tx off", "gro", "on" if _faces_a_switch(intf) else "off")
        if not rps_cpus:
            continue
        # /sys shows the namespace that mounted it: mount this one's, in a private mount namespace.
        path = f"/sys/class/net/{intf.name}/queues/rx-0/rps_cpus"
        out = host.cmd(f"unshare -m sh -c 'umount -l /sys && mount -t sysfs sysfs /sys && "
                       f"echo {rps_cpus:x} > {path} && cat {path}'").strip()
        try:
            ok = parse_cpu_mask(out.replace(",", "")) == rps_cpus  # sysfs groups the mask in 32-bit words
        except ValueError:
            ok = False
        if not ok:
            raise RuntimeError(f"{host.name}: cannot set RPS CPUs {rps_cpus:x} on {intf.name}: {out}")


class Client(Host):
    """Two interfaces, one per path, each with its own routing table.

    ``follows_add_addr=True`` (c1): the path manager accepts ADD_ADDR and opens
    a subflow per interface to the announced address (respects the C flag).
    ``False`` (c2): the default of Linux clients, a ``subflow`` endpoint that
    joins the server's initial address and port, i.e. VIP:service-port.
    """

    def config(self, nets=(), follows_add_addr=True, rps_cpus=0, nets6=(), **params):
        r = super().config(**params)
        tune_interfaces(self, rps_cpus)
        self.nets = tuple(nets)
        self.follows_add_addr = follows_add_addr
        self._paths("ip", [(f"{net}.1", f"{net}.254") for net in nets], follows_add_addr)
        if nets6:  # the same over IPv6; the path manager pairs each family's endpoints with its own
            for idx, net in enumerate(nets6):
                self.cmd(f"ip -6 addr add {net}::1/64 dev {self.name}-eth{idx} nodad")
            self._paths("ip -6", [(f"{net}::1", f"{net}::{ROUTER6}") for net in nets6], follows_add_addr)
        self.cmd(f"ip mptcp limits set subflows 4 add_addr_accepted {4 if follows_add_addr else 0}")
        return r

    def _paths(self, ip: str, paths: list[tuple[str, str]], follows_add_addr: bool) -> None:
        """One routing table and one MPTCP endpoint per (own address, router) path, in interface order."""
        for idx, (address, router) in enumerate(paths):
            intf, table = f"{self.name}-eth{idx}", 101 + idx
            self.cmd(f"{ip} route add default via {router} dev {intf} table {table}")
            self.cmd(f"{ip} rule add from {address} table {table}")
            if follows_add_addr:
                self.cmd(f"ip mptcp endpoint add {address} dev {intf} subflow fullmesh")
            elif idx:
                self.cmd(f"ip mptcp endpoint add {address} dev {intf} subflow")
        self.cmd(f"{ip} route add default via {paths[0][1]}")

    def one_subflow_per_path(self, on: bool = True) -> None:
        """Join an announced address from the second path only (on), or from every path again (off).

        A client that follows ADD_ADDR (c1) has a fullmesh endpoint per
        address, so in port mode it joins the DIP's announced address from
        both, and its first path carries two subflows next to the second's
        one. Without the first address's endpoint it opens one subflow per
        path, the shape of c2's in token mode (IPv4 endpoints only).
        """
        if not self.follows_add_addr:
            raise ValueError(f"{self.name} does not follow ADD_ADDR: it opens one subflow per path already")
        address, intf = f"{self.nets[0]}.1", f"{self.name}-eth0"
        ids = [line.split(" id ")[1].split()[0] for line in self.cmd("ip mptcp endpoint show").splitlines()
               if line.startswith(f"{address} ")]
        if on:
            for endpoint_id in ids:
                self.cmd(f"ip mptcp endpoint delete id {endpoint_id}")
        elif not ids:
            self.cmd(f"ip mptcp endpoint add {address} dev {intf} subflow fullmesh")

    def set_path_mtu(self, mtu: int | None) -> None:
        """Send at most ``mtu`` bytes per packet yet still offer the full MSS, as behind a tunnel it knows of.

        None puts the plain routes back. The MSS stays 1460, so servers send
        full-size packets towards this client and depend on path MTU discovery.
        """
        metrics = f"mtu {mtu} advmss 1460" if mtu else ""
        for idx, net in enumerate(self.nets):
            self.cmd(f"ip route replace default via {net}.254 dev {self.name}-eth{idx} table {101 + idx} {metrics}")
        self.cmd(f"ip route replace default via {self.nets[0]}.254 dev {self.name}-eth0 {metrics}")


class BorderRouter(Host):
    """Routes the VIP to both MUXes with ECMP on an L4 hash, and DSR replies to the client.

    The VIP's route is static (``set_vip_route``), or with ``bgp`` learnt from
    the MUXes' speakers by the BIRD that ``router_bird_config`` configures.
    """

    def config(self, rps_cpus=0, bgp=False, nets6=(), **params):
        """``nets6``: (port, IPv6 /64 prefix) of each interface that is dual-stack; the router is ::fe on it."""
        r = super().config(**params)
        tune_interfaces(self, rps_cpus)
        for key in ("ip_forward=1", "conf.all.rp_filter=0", "conf.default.rp_filter=0",
                    "fib_multipath_hash_policy=1"):
            self.cmd(f"sysctl -qw net.ipv4.{key}")
        for intf in self.intfList():
            self.cmd(f"sysctl -qw net.ipv4.conf.{intf.name.replace('.', '/')}.rp_filter=0")
        self.ipv6 = bool(nets6)
        if self.ipv6:
            for key in ("conf.all.forwarding=1", "fib_multipath_hash_policy=1"):
                self.cmd(f"sysctl -qw net.ipv6.{key}")
            for port, net in nets6:
                self.cmd(f"ip -6 addr add {net}::{ROUTER6}/64 dev {self.name}-eth{port} nodad")
        if not bgp:
            self.set_vip_route()
        return r

    def set_client_link_mtu(self, client: Host, mtu: int) -> None:
        """The MTU of this router's links to ``client``: what it forwards to it in one packet."""
        for intf in self.intfList():
            if intf.link and client in (intf.link.intf1.node, intf.link.intf2.node):
                self.cmd(f"ip link set dev {intf.name} mtu {mtu}")

    def set_vip_route(self, only_mux: int | None = None) -> None:
        """ECMP over both MUXes, or pin the VIP to one MUX (1 or 2) for a test."""
        hops = [i for i in range(1, len(MUX_NETS) + 1) if only_mux in (None, i)]
        nexthops = " ".join(f"nexthop via {mux_address(i)} dev {self.name}-eth{1 + i}" for i in hops)
        self.cmd(f"ip route replace {VIP}/32 {nexthops}")
        if self.ipv6:
            nexthops = " ".join(f"nexthop via {mux_address6(i)} dev {self.name}-eth{1 + i}" for i in hops)
            self.cmd(f"ip -6 route replace {VIP6}/128 {nexthops}")


def router_bird_config(prefix: str = "") -> str:
    """The border router's BIRD 2: an eBGP session with BFD to each MUX's speaker, their routes merged into ECMP.

    ``merge paths`` puts every equally good route to the VIP into the
    kernel as one multipath route, which the kernel hashes on L4
    (``fib_multipath_hash_policy=1``) as the static route does.
    """
    sessions = "".join(f"""
protocol bgp mux{i} {{
	local {net}.254 as {ROUTER_ASN};
	neighbor {speaker_address(i)} as {MUX_ASN};
	hold time 3;
	keepalive time 1;
	connect retry time 1;
	error wait time 1, 4;
	bfd on;
	ipv4 {{ import all; export none; }};
}}
""" for i, net in enumerate(MUX_NETS, start=1))
    return f"""router id {MUX_NETS[0]}.254;
protocol device {{ }}
protocol kernel {{
	ipv4 {{ import none; export all; }};
	merge paths on;
}}
protocol bfd {{
	interface "{prefix}r0-eth*" {{ interval 100 ms; multiplier 3; }};
}}
{sessions}"""


class BgpSpeakerHost(Host):
    """A MUX's BGP speaker: one interface, on a port of the MUX bridge, that reaches the router through it."""

    def config(self, **params):
        r = super().config(**params)
        tune_interfaces(self)
        return r


class MgmtHost(Host):
    """The controller's management port on the fabric: an interface in the root namespace, where it runs."""

    def __init__(self, name, **params):
        super().__init__(name, inNamespace=False, **params)

    def config(self, **params):
        r = super().config(**params)
        tune_interfaces(self)
        return r


class DipHost(Host):
    def config(self, rps_cpus=0, address6=None, **params):
        r = super().config(**params)
        tune_interfaces(self, rps_cpus)
        self.cmd(f"ip route add default via {FABRIC_NET}.254")
        if address6:
            self.cmd(f"ip -6 addr add {address6}/64 dev {self.name}-eth0 nodad")
            self.cmd(f"ip -6 route add default via {FABRIC_NET6}::{ROUTER6}")
        return r


class _TypedPorts:
    """Adds every port of the switch as ``port_type`` (``mptcp_lb.datapath.PORT_TYPES``)."""

    def __init__(self, name, port_type: str = "system", **params):
        self.port_type = port_type
        port_options(port_type)  # validates before anything is built
        super().__init__(name, **params)

    def intfOpts(self, intf):
        opts = super().intfOpts(intf) or f" -- set Interface {intf}"
        return " ".join([opts, *port_options(self.port_type)])


class MuxSwitch(_TypedPorts, OVSSwitch):
    """A MUX bridge: OpenFlow 1.3, secure fail mode (the controller programs it), typed ports."""


class FabricSwitch(_TypedPorts, OVSBridge):
    """The L2 fabric between MUXes, DIPs and the router's return path, with typed ports."""


class DatacenterTopo(Topo):
    """Client, border router, two MUX bridges, an L2 fabric and ``n_dips`` DIPs.

    ``prefix`` makes every node (and so every interface and bridge) name
    unique, so tests can build topologies without clashing. ``port_type``
    is the OVS port type of every bridge port (None: the host's default).
    ``rps_cpus`` is where hosts process what they receive (``tune_interfaces``;
    ``Datacenter`` passes the CPUs its PMD thread leaves free). ``bgp`` adds
    each MUX's BGP speaker host ``bgpN`` on port 3 of its bridge, and leaves
    the router without a static VIP route. ``ipv6`` makes every host, the
    router and the VIP dual-stack (module docstring).
    """

    def build(self, n_dips: int = 3, prefix: str = "", port_type: str | None = None, rps_cpus: int = 0,
              bgp: bool = False, ipv6: bool = False):
        p = prefix
        port_type = resolve_port_type(port_type)
        ports = (0, 1, 5, 6)  # the router's ports to the clients; 2-4 face the MUXes and the fabric
        nets6 = ([*zip(ports, [n for nets in CLIENT_NETS6.values() for n in nets]), *zip((2, 3), MUX_NETS6),
                  (4, FABRIC_NET6)] if ipv6 else [])
        router = self.addHost(f"{p}r0", cls=BorderRouter, ip=None, rps_cpus=rps_cpus, bgp=bgp, nets6=nets6)
        router_ports = iter(ports)
        for name, nets in CLIENT_NETS.items():
            client = self.addHost(f"{p}{name}", cls=Client, ip=None, nets=nets, follows_add_addr=name == "c1",
                                  rps_cpus=rps_cpus, nets6=CLIENT_NETS6[name] if ipv6 else ())
            for idx, net in enumerate(nets):
                self.addLink(client, router, port1=idx, port2=next(router_ports),
                             params1={"ip": f"{net}.1/24"}, params2={"ip": f"{net}.254/24"})
        fab = self.addSwitch(f"{p}fab", cls=FabricSwitch, datapath="user", dpid="%016x" % 0x2000,
                             port_type=port_type)
        for i, net in enumerate(MUX_NETS, start=1):
            mux = self.addSwitch(f"{p}mux{i}", cls=MuxSwitch, datapath="user", failMode="secure",
                                 protocols="OpenFlow13", dpid="%016x" % (0x1000 + i), port_type=port_type)
            self.addLink(router, mux, port1=1 + i, port2=1, params1={"ip": f"{net}.254/24"})
            self.addLink(mux, fab, port1=2, port2=i)
            if bgp:
                speaker = self.addHost(f"{p}bgp{i}", cls=BgpSpeakerHost, ip=f"{speaker_address(i)}/24",
                                       mac=speaker_mac(i))
                self.addLink(speaker, mux, port1=0, port2=SPEAKER_PORT)
        self.addLink(router, fab, port1=4, port2=10, params1={"ip": f"{FABRIC_NET}.254/24"})
        for i in range(1, n_dips + 1):
            dip = self.addHost(f"{p}d{i}", cls=DipHost, ip=f"{FABRIC_NET}.{i}/24", mac=dip_mac(i), rps_cpus=rps_cpus,
                               address6=dip_address6(i) if ipv6 else None)
            self.addLink(dip, fab, port1=0, port2=10 + i)
        mgmt = self.addHost(f"{p}mgmt", cls=MgmtHost, ip=f"{MGMT_ADDRESS}/24")
        self.addLink(mgmt, fab, port1=0, port2=9)


topos = {"datacenter": lambda n_dips=3, port_type=None: DatacenterTopo(n_dips=int(n_dips), port_type=port_type)}
