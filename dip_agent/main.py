"""The DIP agent process: set up this namespace as a DIP, undo on exit.

It runs inside the DIP's network namespace and stays in the foreground until
SIGTERM or SIGINT, so whoever started it can stop it and trust that the
namespace is left as it was found. It configures the host; the application
serves. ``echo=True`` also serves the project's test echo service on the
VIP's service port (the demo, tests and benchmarks use it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from mptcp_lb.config import Config, ConfigError, Dip, Vip, load_config
from mptcp_lb.mptcp_sockopt import MptcpUnavailable

from .echo_server import EchoServer
from .host_setup import DipHostSetup
from .metrics import serve_metrics

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_NO_MPTCP = 3

__all__ = ["run", "find_dip", "EXIT_OK", "EXIT_CONFIG", "EXIT_NO_MPTCP"]


def find_dip(config: Config, dip_id: int, vip_name: str | None = None) -> tuple[Vip, Dip]:
    """The VIP and DIP this agent serves; ConfigError names the --dip/--vip that does not fit."""
    if vip_name is not None:
        try:
            vip = config.vip(vip_name)
        except KeyError:
            names = ", ".join(v.name for v in config.vips)
            raise ConfigError([f"--vip {vip_name}: no such VIP (configured: {names})"]) from None
    elif len(config.vips) == 1:
        (vip,) = config.vips
    else:
        names = ", ".join(v.name for v in config.vips)
        raise ConfigError([f"--vip is required: the config has {len(config.vips)} VIPs ({names})"])
    try:
        return vip, vip.dip(dip_id)
    except KeyError:
        ids = ", ".join(str(d.id) for d in vip.dips)
        raise ConfigError([f"--dip {dip_id}: VIP {vip.name} has no DIP with that id (ids: {ids})"]) from None


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event):
    """Turn SIGTERM/SIGINT into ``stop.set()`` so teardown always runs."""
    def handler(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def default_interface() -> str:
    """The interface of the default route: where VIP traffic usually arrives from the MUXes."""
    try:
        with IPRoute() as ipr:
            routes = ipr.route("get", dst="1.1.1.1")
            return ipr.get_links(routes[0].get_attr("RTA_OIF"))[0].get_attr("IFLA_IFNAME")
    except (NetlinkError, IndexError) as e:
        raise ConfigError([f"--interface: not given, and no default route to find the fabric interface by "
                           f"({e})"]) from e


def dip_programs(vip: Vip, dip: Dip, key_adoption: bool = True, interface: str | None = None,
                 flows: int | None = None):
    """The DIP's BPF programs (dip_agent/programs.py), in every mode.

    All modes: the second chance for a slot's connections while it moves.
    The token modes add key adoption (``tcp_syncookies=2``) and timestamp
    stamping. In hybrid mode they stamp every port of the VIP, not just the
    service port: joins to the DIP's announced port then echo its server ID
    too. Otherwise their TSecr would give the MUX classifier's tag a new
    value every millisecond, and OVS a new datapath flow (an upcall) each time.
    """
    from .programs import DipPrograms

    tokens = vip.uses_tokens
    mode = vip.key_source if tokens and key_adoption else "none"  # seed, pool: DipPrograms's names too
    port = 0 if tokens and vip.uses_ports else vip.port  # 0: every port of the VIP
    interfaces = interface.split(",") if interface else [default_interface()]
    # Second chance over IPv6 passes a packet on to the previous owner's IPv6 address, which the
    # MUX's mark names by its IPv4 one.
    peers6 = {d.address: d.address6 for d in vip.dips if d.address6 is not None and d.id != dip.id}
    return DipPrograms(interfaces, vip.address, port, dip.id,
                       mode=mode, slices=dip.slices, slice_bits=vip.slice_bits, stamp=tokens,
                       self_address=dip.address, syncookies=2 if tokens and key_adoption else None,
                       flows=flows, vip6=vip.address6, peers6=peers6 if vip.address6 else None)


def run(config_path: str, dip_id: int, vip_name: str | None = None, ready_file: str | None = None,
        key_adoption: bool = True, interface: str | None = None, echo: bool = False, flows: int | None = None,
        metrics: tuple[str, int] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; return the process exit code.

    ``metrics`` is the (host, port) to serve the programs' Prometheus metrics on; None serves none.
    """
    try:
        vip, dip = find_dip(load_config(config_path), dip_id, vip_name)
        programs = dip_programs(vip, dip, key_adoption, interface, flows)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return EXIT_CONFIG
    setup = DipHostSetup(vip.address, dip.announce_port, c_flag=not vip.uses_tokens, vip6=vip.address6)
    server = EchoServer(dip.id, vip.port, ipv6=vip.address6 is not None) if echo else None
    stop = threading.Event()
    exporter = None
    # Signals are caught from before apply() so a stop during setup still undoes it.
    with _stop_on_signals(stop):
        try:
            setup.apply()
        except MptcpUnavailable as e:
            print(f"MPTCP unavailable: {e}", file=sys.stderr)
            return EXIT_NO_MPTCP
        try:
            programs.apply()
            log.info("DIP %d set up for VIP %s (%s%s:%d, mode %s), announcing port %s%s", dip.id, vip.name,
                     vip.address, f" and [{vip.address6}]" if vip.address6 else "", vip.port, vip.mode,
                     dip.announce_port,
                     ", serving the echo service" if server else "")
            if server is not None:
                server.start()
            if metrics is not None:
                try:
                    exporter = serve_metrics(programs, vip.name, dip.id, *metrics)
                except OSError as e:
                    print(f"--metrics-host/--metrics-port {metrics[0]}:{metrics[1]}: {e.strerror or e}",
                          file=sys.stderr)
                    return EXIT_CONFIG
                log.info("metrics on http://%s:%d/metrics", *metrics)
            if ready_file is not None:
                with open(ready_file, "w", encoding="ascii") as f:
                    f.write("ready\n")
                log.info("wrote ready to %s", ready_file)
            stop.wait()
        finally:
            if ready_file is not None and os.path.exists(ready_file):
                os.unlink(ready_file)
            if server is not None:
                server.stop()
            if exporter is not None:
                exporter.shutdown()
            try:
                programs.undo()
            finally:
                setup.undo()
    return EXIT_OK
