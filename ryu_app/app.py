"""The os-ken application: a thin shim between OpenFlow events and ``LbCore``.

Load it as ryu-manager would, by module name (``ryu_app.app``); it reads the
config path from the ``MPTCP_LB_CONFIG`` environment variable. Each handler
passes the event (and the time, which the core never reads itself) to the
core and sends back whatever messages it returns.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import ssl
import threading
import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.ofproto import ofproto_v1_3

from ovs_flows.compiler import RENEW_INTERVAL
from ovs_flows.reconcile import flow_identities
from ryu_app import launch, state_file
from ryu_app.api import ApiServer, MetricsServer, TokenFileError, read_token
from ryu_app.core import LbCore
from ryu_app.health import HealthChecks
from ryu_app.multipart import MultipartBuffer
from ryu_app.tls_socket import SerializedTLSSocket

CONFIG_ENV = "MPTCP_LB_CONFIG"
log = logging.getLogger(__name__)


def guarded(handler):
    """Log and survive a handler's exception.

    With os-ken's native hub, ``hub.TaskExit`` *is* ``Exception``: one
    exception escaping a handler silently ends the app's event loop, and the
    controller stops reacting to every switch. Never let one out.
    """
    @functools.wraps(handler)
    def wrapper(self, *args, **kwargs):
        try:
            return handler(self, *args, **kwargs)
        except Exception:
            log.exception("error in %s; carrying on", handler.__name__)
    return wrapper


def peer_cert_sha256(sock) -> str | None:
    """The SHA-256 (hex) of the certificate a TLS peer presented, or None on plain TCP."""
    if not isinstance(sock, (ssl.SSLSocket, SerializedTLSSocket)):
        return None
    der = sock.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest() if der else None


class MptcpLbApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stopping = threading.Event()
        self.api = self.metrics = self.health = None
        launch.at_shutdown(self.shut_down)  # from here on: a SIGTERM while starting undoes what is started
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise RuntimeError(f"set {CONFIG_ENV} to the mptcp-lb YAML config path")
        now = time.monotonic()
        base, config, restored = state_file.restore(path, now, time.time())
        if restored is not None:
            log.info("carrying on from %s", config.controller.state_file)
        self.core = LbCore(config, now, base=base, restored=restored)
        self.datapaths: dict[int, object] = {}
        self._partial = MultipartBuffer()
        settings = config.controller
        self.health = HealthChecks(settings.probe_interface, self._health_result) if settings.probe_interface \
            else None
        if self.health is None:
            log.warning("no controller.probe_interface: health checks are off, a dead DIP keeps its slots")
        if settings.api_token_file is None:
            raise TokenFileError("controller.api_token_file: not set; the REST API takes no request without a "
                                 "token (make one with `mptcp-lb api-token FILE`)")
        self.api = ApiServer(self.core, settings.api_host, settings.api_port, read_token(settings.api_token_file),
                             on_change=self._config_changed)
        self.metrics = MetricsServer(self.core, settings.metrics_host, settings.metrics_port)
        self.api.start()
        self.metrics.start()
        if self.health is not None:
            self.health.start(config)
        self.key_banks_follow_config()
        self._loops = [hub.spawn(self._audit_loop), hub.spawn(self._keepalive_loop)]
        self.threads.extend(self._loops)

    def key_banks_follow_config(self) -> None:
        """A running KeyBank for each slice width seed-mode VIPs use, stocking their DIPs' slices."""
        from mptcp_lb.key_bank import KeyBank

        wanted = self.core.seed_slices()
        banks = dict(self.core.key_banks)
        for bits, slices in wanted.items():
            if bits in banks:
                banks[bits].want(slices)
            else:
                banks[bits] = KeyBank(bits, slices)
                banks[bits].start()
        for bits in set(banks) - set(wanted):
            banks.pop(bits).stop()
        self.core.key_banks = banks

    def shut_down(self) -> None:
        """End the loops, close the listeners, stop the key banks and probing (ryu_app/launch.py, on SIGTERM)."""
        self._stopping.set()
        for loop in getattr(self, "_loops", []):
            loop.join(2)  # one mid-audit finishes it
        self.close()

    def close(self):
        """Every part is stopped even if one fails to; the probe routes go last, after anything that adds them."""
        parts = [bank.stop for bank in getattr(getattr(self, "core", None), "key_banks", {}).values()]
        parts += [part.stop for part in (self.api, self.metrics, self.health) if part is not None]
        failed = None
        for stop in parts:
            try:
                stop()
            except Exception as e:
                log.exception("stopping %s", stop)
                failed = failed or e
        super().close()
        if failed is not None:
            raise failed

    # ------------------------------------------------------------ runtime changes

    def _save_state(self) -> None:
        path = self.core.config.controller.state_file
        if path:
            try:
                state_file.save(path, self.core.runtime_state(), time.monotonic(), time.time())
            except OSError:
                log.exception("could not save the runtime state to %s", path)

    def _changed(self) -> None:
        """The slot tables or the config changed: persist, then converge every MUX now."""
        self._save_state()
        self.audit_all()

    def _config_changed(self) -> None:
        if self.health is not None:
            self.health.update(self.core.config)
        self.key_banks_follow_config()
        self._changed()

    def _health_result(self, target, error: str, now: float) -> None:
        if self.core.health_result(target.vip, target.dip, error, now):
            self._changed()

    # ------------------------------------------------------------ sending

    def send(self, dp, msgs) -> None:
        for msg in msgs:
            msg.datapath = dp
            dp.send_msg(msg)

    def audit_all(self) -> None:
        for dpid, dp in list(self.datapaths.items()):
            self.send(dp, self.core.audit(dpid, time.monotonic()))

    def _audit_loop(self):
        while not self._stopping.wait(self.core.config.controller.audit_interval):
            guarded(MptcpLbApp._tick)(self)

    def _keepalive_loop(self):
        while not self._stopping.wait(RENEW_INTERVAL):
            for dpid, dp in list(self.datapaths.items()):
                guarded(MptcpLbApp.send)(self, dp, self.core.keepalive(dpid))

    def _tick(self) -> None:
        """End the transitions that ran out (persisting that), retry paused health checks, audit every MUX."""
        if self.core.tick(time.monotonic()):
            self._save_state()
        if self.health is not None and not self.health.ready and self.health.update(self.core.config):
            log.info("health checks resumed through %s", self.health.routes.interface)
        self.audit_all()

    # ------------------------------------------------------------ events

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    @guarded
    def _state_change(self, ev):
        dp = ev.datapath
        if dp.id is None:
            return
        if ev.state == MAIN_DISPATCHER:
            held = self.datapaths.get(dp.id)
            live = held is not None and held is not dp and held.is_active
            if self.core.admit(dp.id, dp.address[0], peer_cert_sha256(dp.socket), live) is not None:
                dp.close()
                return
            msgs = self.core.mux_connected(dp.id, time.monotonic())
            if msgs:
                self.datapaths[dp.id] = dp
                self.send(dp, msgs)
        elif self.datapaths.get(dp.id) is dp:
            del self.datapaths[dp.id]
            self._partial.forget(dp.id)
            self.core.mux_disconnected(dp.id)

    def _multipart_body(self, ev, extra=None) -> list | None:
        """Collect a multipart reply split over several messages; None until complete (ryu_app/multipart.py).

        ``extra(msg)`` adds something per entry of each message (flow
        identities): the result is then a list of (entry, extra) pairs.
        """
        msg = ev.msg
        entries = msg.body if extra is None else list(zip(msg.body, extra(msg)))
        return self._partial.add(msg.datapath.id, msg.xid, entries, bool(msg.flags & ofproto_v1_3.OFPMPF_REPLY_MORE),
                                 time.monotonic())

    @set_ev_cls(ofp_event.EventOFPMeterConfigStatsReply, MAIN_DISPATCHER)
    @guarded
    def _meter_config(self, ev):
        body = self._multipart_body(ev)
        if body is not None:
            self.core.meter_config_reply(ev.msg.datapath.id, body)

    @set_ev_cls(ofp_event.EventOFPGroupDescStatsReply, MAIN_DISPATCHER)
    @guarded
    def _group_desc(self, ev):
        body = self._multipart_body(ev)
        if body is not None:
            self.core.group_desc_reply(ev.msg.datapath.id, body)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    @guarded
    def _flow_stats(self, ev):
        body = self._multipart_body(ev, lambda msg: flow_identities(msg.buf, [s.length for s in msg.body]))
        if body is not None:
            stats = [s for s, _ in body]
            self.send(ev.msg.datapath, self.core.flow_stats_reply(ev.msg.datapath.id, stats, [i for _, i in body]))

    @set_ev_cls(ofp_event.EventOFPGroupStatsReply, MAIN_DISPATCHER)
    @guarded
    def _group_stats(self, ev):
        body = self._multipart_body(ev)
        if body is not None:
            self.send(ev.msg.datapath, self.core.group_stats_reply(ev.msg.datapath.id, body, time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    @guarded
    def _flow_removed(self, ev):
        self.send(ev.msg.datapath, self.core.flow_removed(ev.msg.datapath.id, ev.msg, time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    @guarded
    def _packet_in(self, ev):
        self.send(ev.msg.datapath, self.core.packet_in(ev.msg.datapath.id, ev.msg.data))

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    @guarded
    def _error(self, ev):
        log.error("OpenFlow error from dpid=%#x: type=%s code=%s", ev.msg.datapath.id,
                  ev.msg.type, ev.msg.code)
