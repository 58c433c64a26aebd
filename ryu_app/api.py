"""The JSON REST API, and Prometheus ``/metrics`` on a listener of its own, served from plain threads.

os-ken has no WSGI layer that runs on Python 3.11, and monkey-patching
eventlet is off the table, so this is ``http.server``, on loopback by default.

  GET    /vips                         VIPs, their DIPs and states
  GET    /muxes                        MUX connection state and flow counts
  POST   /vips/VIP/dips                add a DIP (JSON body like a config entry)
  POST   /vips/VIP/dips/ID/drain       no new connections; its slots move away, its connections stay
  POST   /vips/VIP/dips/ID/activate    take new connections again
  DELETE /vips/VIP/dips/ID[?force=1]   remove a DIP: refused (409) while it is active or its slots'
                                       transition still gives its connections a second chance

Every request needs ``Authorization: Bearer <token>`` (the token in
``controller.api_token_file``; 401 otherwise). A request that changes state
must say ``Content-Type: application/json`` (415): a browser cannot send
that cross-origin without asking first. A request whose ``Origin`` is not
the API's own is refused (403): another page, or a name rebound to
loopback. Every change is validated as a whole new config before it is
applied, so a rejected request changes nothing.

``MetricsServer`` serves ``GET /metrics`` and nothing else, without a
token, on ``controller.metrics_host``/``metrics_port``: Prometheus scrapes
it without reaching the control routes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mptcp_lb.config import ConfigError, dump_dip, with_dip_added, with_dip_removed, with_dip_state
from ryu_app.metrics import make_registry

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024


class TokenFileError(RuntimeError):
    """The API token file cannot be used; the message names it and why."""


def read_token(path: str) -> str:
    """The API token in ``path``: refused if others may read it, or if it is missing or empty."""
    try:
        mode = os.stat(path).st_mode
        with open(path, encoding="ascii") as f:
            token = f.read().strip()
    except OSError as e:
        raise TokenFileError(f"controller.api_token_file: {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise TokenFileError(f"controller.api_token_file: {path} is not an ASCII token") from e
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise TokenFileError(f"controller.api_token_file: {path} is readable by others (mode "
                             f"{stat.S_IMODE(mode):04o}): chmod 600 it")
    if len(token) < 16:
        raise TokenFileError(f"controller.api_token_file: {path} holds no token of at least 16 characters")
    return token


def write_token(path: str) -> None:
    """A new random token in ``path``, readable by its owner only; never printed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


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
        out.append({"name": v.name, "address": v.address, **({"address6": v.address6} if v.address6 else {}),
                    "port": v.port, "mode": v.mode, "slots": v.slots,
                    "slots_in_transition": len(table.transitions) if table else 0,
                    "health_check": v.health.kind if core.health_enabled(v.name) else "off", "dips": dips})
    return out


class _Server:
    """An HTTP listener in a thread of its own whose requests ``route`` answers."""

    name = "http"

    def __init__(self, host: str, port: int):
        self.httpd = ThreadingHTTPServer((host, port), _handler_class(self))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name=f"mptcp-lb-{self.name}",
                                        daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> None:
        self._thread.start()
        log.info("%s on http://%s:%d", self.name, *self.address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def route(self, method: str, path: str, headers, body: bytes, query: dict):
        raise NotImplementedError


class MetricsServer(_Server):
    """Prometheus's read-only listener: ``GET /metrics``, and nothing else."""

    name = "metrics"

    def __init__(self, core, host: str, port: int):
        self.registry = make_registry(core)
        super().__init__(host, port)

    def route(self, method, path, headers, body, query):
        if method == "GET" and path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        raise ApiError(404, f"only GET /metrics here, not {method} {path}")


class ApiServer(_Server):
    """The control routes, behind the bearer token."""

    name = "REST API"

    def __init__(self, core, host: str, port: int, token: str, on_change=lambda: None):
        self.core = core
        self.on_change = on_change
        self._token = token.encode()
        self._change_lock = threading.Lock()
        super().__init__(host, port)

    def _guard(self, method: str, headers) -> None:
        """403 for a foreign Origin, 401 without the token, 415 for a change that is not JSON."""
        origin = headers.get("Origin")
        if origin is not None and origin not in self._own_origins():
            raise ApiError(403, f"Origin {origin[:80]!r} is not this API's own")
        auth = headers.get("Authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), self._token):
            raise ApiError(401, "an Authorization: Bearer header with the API token (controller.api_token_file) "
                                "is required")
        if method != "GET" and (headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            raise ApiError(415, "a request that changes state must be Content-Type: application/json")

    def _own_origins(self) -> set[str]:
        host, port = self.address
        return {f"http://{h}:{port}" for h in (host, "localhost" if host == "127.0.0.1" else host)}

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

    def route(self, method: str, path: str, headers, body: bytes, query: dict):
        """Return (status, content_type, payload bytes) for one request."""
        self._guard(method, headers)
        if method == "GET" and path == "/vips":
            return _json(200, vips_view(self.core, time.monotonic()))
        if method == "GET" and path == "/muxes":
            muxes = [{k: v for k, v in m.items() if k != "dip_counters"} for m in self.core.snapshot()["muxes"]]
            return _json(200, muxes)
        m = re.fullmatch(r"/vips/([^/]{1,32})/dips(?:/(\d{1,4})(?:/(drain|activate))?)?", path)
        if not m:
            raise ApiError(404, f"no route for {method} {path}")
        vip, dip_id, action = m.group(1), m.group(2), m.group(3)
        if method == "POST" and dip_id is None:
            try:
                raw = json.loads(body or b"null")
            except ValueError as e:
                raise ApiError(400, f"body is not JSON: {e}") from e
            self._change(lambda c: with_dip_added(c, vip, raw))
            return _json(201, vips_view(self.core, time.monotonic()))
        if method == "POST" and action:
            state = "draining" if action == "drain" else "active"
            self._change(lambda c: with_dip_state(c, vip, int(dip_id), state))
            return _json(200, vips_view(self.core, time.monotonic()))
        if method == "DELETE" and dip_id is not None and action is None:
            if query.get("force", ["0"])[-1] not in ("1", "true"):
                self._removable(vip, int(dip_id))
            self._change(lambda c: with_dip_removed(c, vip, int(dip_id)))
            return _json(200, vips_view(self.core, time.monotonic()))
        raise ApiError(405, f"{method} not allowed on {path}")



def _json(status: int, obj):
    return status, "application/json", (json.dumps(obj, indent=1) + "\n").encode()


def _handler_class(server: _Server):
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # seconds a client may stall before its connection is dropped

        def _serve(self):
            extra = {}
            try:
                raw_length = self.headers.get("Content-Length") or "0"
                if not re.fullmatch(r"\d{1,9}", raw_length):
                    raise ApiError(400, f"Content-Length {raw_length[:20]!r} is not a byte count")
                length = int(raw_length)
                if length > MAX_BODY:
                    raise ApiError(413, f"body of {length} bytes exceeds {MAX_BODY}")
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                status, ctype, payload = server.route(self.command, url.path, self.headers, body,
                                                      parse_qs(url.query))
            except ApiError as e:
                status, ctype, payload = _json(e.status, {"error": str(e)})
                if e.status == 401:
                    extra["WWW-Authenticate"] = 'Bearer realm="mptcp-lb"'
            except Exception:  # a bug must cost one request, not the server's thread
                log.exception("%s: %s %s failed", server.name, self.command, self.path)
                status, ctype, payload = _json(500, {"error": "internal error (see controller log)"})
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, fmt, *args):
            log.debug(f"{server.name}: " + fmt, *args)

    return Handler
