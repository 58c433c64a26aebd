"""launch.configure_os_ken: the options os-ken runs with, and TLS switch connections serialized."""

from __future__ import annotations

import pytest
from os_ken import cfg
from os_ken.base import app_manager  # noqa: F401  (first: os-ken's modules import each other)
from os_ken.controller import controller

from mptcp_lb.config import parse_config
from ryu_app import launch


SET = ("ofp_listen_host", "ofp_tcp_listen_port", "ofp_ssl_listen_port", "ctl_privkey", "ctl_cert", "ca_certs",
       "echo_request_interval", "maximum_unreplied_echo_requests")


@pytest.fixture
def factory(monkeypatch):
    """os-ken's connection factory; it, the environment and os-ken's options are put back after the test."""
    monkeypatch.setattr(controller, "datapath_connection_factory", controller.datapath_connection_factory)
    monkeypatch.setenv("MPTCP_LB_CONFIG", "")
    yield controller.datapath_connection_factory
    for name in SET:
        cfg.CONF.clear_override(name)


def test_with_tls_every_switch_connection_is_serialized(raw_config, factory):
    raw_config["controller"]["tls"] = {"privkey": "/etc/lb/ctl-privkey.pem", "cert": "/etc/lb/ctl-cert.pem",
                                       "ca_cert": "/etc/lb/switchca.pem"}
    launch.configure_os_ken(parse_config(raw_config), "lb.yaml")
    installed = controller.datapath_connection_factory
    assert installed.serializes_tls and installed.__wrapped__ is factory
    # os-ken's listener takes the factory by its module name when it starts, so it is this one.
    assert "datapath_connection_factory" in controller.OpenFlowController.server_loop.__code__.co_names
    assert cfg.CONF.ofp_ssl_listen_port == raw_config["controller"]["openflow_port"]
    launch.configure_os_ken(parse_config(raw_config), "lb.yaml")
    assert controller.datapath_connection_factory is installed  # wrapped once, however often configured


def test_plain_tcp_keeps_os_kens_own_factory(raw_config, factory):
    launch.configure_os_ken(parse_config(raw_config), "lb.yaml")
    assert controller.datapath_connection_factory is factory
    assert cfg.CONF.echo_request_interval == 1.0 and cfg.CONF.maximum_unreplied_echo_requests == 3
