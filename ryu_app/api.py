"""JSON REST API and Prometheus ``/metrics``, served from a plain thread.

os-ken has no WSGI layer that runs on Python 3.11, and monkey-patching
eventlet is off the table, so this is ``http.server`` on loopback by default.

  GET    /vips                         VIPs, their DIPs and states
  GET    /muxes                        MUX connection state and flow counts
  POST   /vips/VIP/dips                add a DIP (JSON body like a config entry)
  POST   /vips/VIP/dips/ID/drain       no new connections; its slots move away, its connections stay
  POST   /vips/VIP/dips/ID/activate    take new connections again
  DELETE /vips/VIP/dips/ID[?force=1]   remove a DIP: refused (409) while it is active or its slots'
                                       transition still gives its connections a second chance
  GET    /metrics                      Prometheus text format

Every change is validated as a whole new config before it is applied, so a
rejected request changes nothing.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from urllib.parse import parse_qs, urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mptcp_lb.config import ConfigError, dump_dip, with_dip_added, with_dip_removed, with_dip_state
from ryu_app.metrics import make_registry

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def vips_view(core, now: float) -> list[dict]:
    """Each VIP with its DIPs: config, health, slots owned, and how long their second chance lasts."""
    snap = core.snapshot()
    out = []
    for v in snap["config"].vips:
        table = snap["tables"].get(v.name)
        owners = table.owners if table else ()
        dips = []
        for d in v.dips:
            entry = dump_dip(d)
            entry["health"] = snap["health"].get((v.name, d.id), {"state": "unknown", "since": None,
                                                                     "last_error": ""})
            entry["slots"] = sum(1 for o in owners if o == d.id)
            ends = [t.until for t in (table.transitions.values() if table else ()) if t.previous == d.id]
            left = max(ends) - now if ends else 0
            entry["second_chance_s"] = max(round(left, 1), 0.1) if left > 0 else 0  # 0 only once it is over
            dips.append(entry)
        out.append({"name": v.name, "address": v.address, "port": v.port, "mode": v.mode, "slots": v.slots,
                    "slots_in_transition": len(table.transitions) if table else 0,
                    "health_check": v.health.kind if core.health_enabled(v.name) else "off", "dips": dips})
    return out


class ApiServer:
    def __init__(self, core, host: str, port: int, on_change=lambda: None):
        self.core = core
        self.on_change = on_change
        self.registry = make_registry(core)
        self._change_lock = threading.Lock()
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mptcp-lb-api", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> None:
        self._thread.start()
        log.info("REST API and /metrics on http://%s:%d", *self.address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ------------------------------------------------------------ routes

    def _change(self, make_config) -> None:
        with self._change_lock:
            try:
                new = make_config(self.core.config)
            except ConfigError as e:
                raise ApiError(400, "; ".join(e.problems)) from e
            except KeyError as e:
                raise ApiError(404, f"no such VIP or DIP: {e.args[0]!r}") from e
            self.core.set_config(new, time.monotonic())
        self.on_change()

    def _removable(self, vip: str, dip_id: int) -> None:
        """409 unless the DIP is draining and no slot still gives its connections a second chance."""
        try:
            dip = self.core.config.vip(vip).dip(dip_id)
        except KeyError as e:
            raise ApiError(404, f"no such VIP or DIP: {e.args[0]!r}") from e
        if dip.state == "active":
            raise ApiError(409, f"DIP {dip_id} is active: drain it first, and remove it once its transition "
                                f"ends (or add ?force=1 and lose its connections)")
        until = self.core.in_transition_from(vip, dip_id, time.monotonic())
        if until is not None:
            raise ApiError(409, f"DIP {dip_id} still holds connections that reach it by second chance for "
                                f"{until - time.monotonic():.0f} s more (controller.transition_time); "
                                f"remove it then, or add ?force=1 and lose them")

    def route(self, method: str, path: str, body: bytes, query: dict | None = None):
        """Return (status, content_type, payload bytes) for one request."""
        query = query or {}
        if method == "GET" and path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if method == "GET" and path == "/vips":
            return self._json(200, vips_view(self.core, time.monotonic()))
        if method == "GET" and path == "/muxes":
            muxes = [{k: v for k, v in m.items() if k != "dip_counters"} for m in self.core.snapshot()["muxes"]]
            return self._json(200, muxes)
        m = re.fullmatch(r"/vips/([^/]+)/dips(?:/(\d+)(?:/(drain|activate))?)?", path)
        if not m:
            raise ApiError(404, f"no route for {method} {path}")
        vip, dip_id, action = m.group(1), m.group(2), m.group(3)
        if method == "POST" and dip_id is None:
            try:
                raw = json.loads(body or b"null")
            except ValueError as e:
                raise ApiError(400, f"body is not JSON: {e}") from e
            self._change(lambda c: with_dip_added(c, vip, raw))
            return self._json(201, vips_view(self.core, time.monotonic()))
        if method == "POST" and action:
            state = "draining" if action == "drain" else "active"
            self._change(lambda c: with_dip_state(c, vip, int(dip_id), state))
            return self._json(200, vips_view(self.core, time.monotonic()))
        if method == "DELETE" and dip_id is not None and action is None:
            if query.get("force", ["0"])[-1] not in ("1", "true"):
                self._removable(vip, int(dip_id))
            self._change(lambda c: with_dip_removed(c, vip, int(dip_id)))
            return self._json(200, vips_view(self.core, time.monotonic()))
        raise ApiError(405, f"{method} not allowed on {path}")

    @staticmethod
    def _json(status: int, obj):
        return status, "application/json", (json.dumps(obj, indent=1) + "\n").encode()

    def _handler_class(self):
        api = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds a client may stall before its connection is dropped

            def _serve(self):
                try:
                    raw_length = self.headers.get("Content-Length") or "0"
                    if not raw_length.isdigit():
                        raise ApiError(400, f"Content-Length {raw_length!r} is not a byte count")
                    length = int(raw_length)
                    if length > MAX_BODY:
                        raise ApiError(413, f"body of {length} bytes exceeds {MAX_BODY}")
                    body = self.rfile.read(length) if length else b""
                    url = urlsplit(self.path)
                    status, ctype, payload = api.route(self.command, url.path, body, parse_qs(url.query))
                except ApiError as e:
                    status, ctype, payload = api._json(e.status, {"error": str(e)})
                except Exception:  # a bug must cost one request, not the API thread
                    log.exception("api: %s %s failed", self.command, self.path)
                    status, ctype, payload = api._json(500, {"error": "internal error (see controller log)"})
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, fmt, *args):
                log.debug("api: " + fmt, *args)

        return Handler
