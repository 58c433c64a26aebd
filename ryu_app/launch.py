"""Start os-ken with the mptcp-lb app, the way Neutron's native driver does."""

from __future__ import annotations

import os
import signal
import sys

from mptcp_lb.config import Config

APP_MODULE = "ryu_app.app"


def run_controller(config: Config, config_path: str) -> None:
    """Block running the OpenFlow controller, REST API and metrics."""
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    from os_ken.controller import controller  # noqa: F401  (registers the ofp-* options)

    os.environ["MPTCP_LB_CONFIG"] = os.path.abspath(config_path)
    cfg.CONF(args=[], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", config.controller.openflow_host)
    cfg.CONF.set_override("ofp_tcp_listen_port", config.controller.openflow_port)
    # SIGTERM (systemd's stop) ends run_apps through its finally: the app closes its API and
    # removes its probe routes, where the default action would leave them behind.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    AppManager.run_apps([APP_MODULE])
