"""Start os-ken with the mptcp-lb app, the way Neutron's native driver does."""

from __future__ import annotations

import logging
import os
import signal
from typing import Callable

from mptcp_lb.config import Config
from ryu_app import tls_socket

APP_MODULE = "ryu_app.app"


def run_controller(config: Config, config_path: str) -> None:
    """Block running the OpenFlow controller, REST API and metrics."""
    from os_ken.base.app_manager import AppManager

    configure_os_ken(config, config_path)
    # SIGTERM (systemd's stop) and SIGINT: the app closes its listeners and removes its probe routes,
    # then the process ends. os-ken's own teardown cannot be used: with its native hub it joins
    # threads it has no way to stop (a connected switch's), then calls a kill() its threads lack.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _shut_down)
    AppManager.run_apps([APP_MODULE])


def configure_os_ken(config: Config, config_path: str) -> None:
    """os-ken's options from the config, and its switch connections made safe for TLS."""
    from os_ken import cfg
    from os_ken.base import app_manager  # noqa: F401  (first: os-ken's modules import each other)
    from os_ken.controller import controller  # also registers the ofp-* options
    from os_ken.lib import hub

    os.environ["MPTCP_LB_CONFIG"] = os.path.abspath(config_path)
    cfg.CONF(args=[], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", config.controller.openflow_host)
    cfg.CONF.set_override("ofp_tcp_listen_port", config.controller.openflow_port)
    tls = config.controller.tls
    if tls is not None:
        # os-ken then listens with TLS only, and requires a switch certificate from ca_cert. Its native
        # hub reads and writes each switch from two threads, which one TLS connection cannot bear.
        if hub.HUB_TYPE == "native":
            controller.datapath_connection_factory = tls_socket.serialized(controller.datapath_connection_factory)
        cfg.CONF.set_override("ofp_ssl_listen_port", config.controller.openflow_port)
        cfg.CONF.set_override("ctl_privkey", tls.privkey)
        cfg.CONF.set_override("ctl_cert", tls.cert)
        cfg.CONF.set_override("ca_certs", tls.ca_cert)
    # A switch that vanished is noticed within ~3 s, so it can reconnect (admit() refuses a second
    # connection for a dpid a live one holds).
    cfg.CONF.set_override("echo_request_interval", 1.0)
    cfg.CONF.set_override("maximum_unreplied_echo_requests", 3)


_shutdown_hooks: list[Callable[[], None]] = []


def at_shutdown(hook: Callable[[], None]) -> None:
    """Run ``hook`` on SIGTERM/SIGINT, before the process ends (the app registers as it starts)."""
    _shutdown_hooks.append(hook)


def _shut_down(signum, frame) -> None:
    log = logging.getLogger(__name__)
    log.info("%s: shutting down", signal.Signals(signum).name)
    code = 0
    for hook in _shutdown_hooks:
        try:
            hook()
        except Exception:
            log.exception("shutting down")
            code = 1
    logging.shutdown()
    os._exit(code)
