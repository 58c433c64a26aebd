"""Start os-ken with the mptcp-lb app, the way Neutron's native driver does."""

from __future__ import annotations

import os

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
    AppManager.run_apps([APP_MODULE])
