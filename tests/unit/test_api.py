import json
import urllib.request

import pytest
from os_ken.ofproto import ofproto_v1_3_parser as parser

from mptcp_lb.config import parse_config
from ryu_app.api import ApiServer, MetricsServer, TokenFileError, read_token, write_token
from ryu_app.core import LbCore
from tests.unit.test_reconcile import as_descs, as_meters, as_stats

TOKEN = "t0k3n-for-tests-only-0123456789"


@pytest.fixture
def api(raw_config):
    core = LbCore(parse_config(raw_config))
    changes = []
    server = ApiServer(core, "127.0.0.1", 0, TOKEN, on_change=lambda: changes.append(1))
    metrics = MetricsServer(core, "127.0.0.1", 0)
    server.start()
    metrics.start()
    server.metrics = metrics
    yield server, core, changes
    server.stop()
    metrics.stop()


def call(server, method, path, body=None, headers=None):
    """A call as a client with the token makes it (JSON for every change); ``headers`` override."""
    host, port = (server.metrics if path == "/metrics" else server).address
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method,
                                 headers={k: v for k, v in sent.items() if v is not None})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
            return r.status, raw if path == "/metrics" else json.loads(raw)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


NEW_DIP = {"id": 4, "address": "10.2.0.4", "mac": "02:00:00:02:00:04", "ports": "16384-20479"}


def test_list_add_drain_activate_remove(api):
    server, core, changes = api
    status, vips = call(server, "GET", "/vips")
    assert status == 200 and [d["id"] for d in vips[0]["dips"]] == [1, 2, 3]
    assert sum(d["slots"] for d in vips[0]["dips"]) == vips[0]["slots"] == 256
    assert {d["health"]["state"] for d in vips[0]["dips"]} == {"unknown"}
    assert call(server, "POST", "/vips/web/dips", NEW_DIP)[0] == 201
    assert [d.id for d in core.config.vips[0].dips] == [1, 2, 3, 4]
    status, vips = call(server, "POST", "/vips/web/dips/2/drain")
    assert status == 200 and vips[0]["dips"][1]["state"] == "draining"
    # DIP 2's slots moved to the others, and give its connections a second chance there.
    assert set(core.compiled["mux1"].group_dips[1][1]) == {1, 3, 4}
    assert vips[0]["dips"][1]["slots"] == 0 and vips[0]["dips"][1]["second_chance_s"] > 0
    assert vips[0]["slots_in_transition"] > 0
    assert call(server, "POST", "/vips/web/dips/2/activate")[0] == 200
    assert set(core.compiled["mux1"].group_dips[1][1]) == {1, 2, 3, 4}
    status, body = call(server, "DELETE", "/vips/web/dips/4")
    assert status == 409 and "is active: drain it first" in body["error"]
    assert call(server, "POST", "/vips/web/dips/4/drain")[0] == 200
    status, body = call(server, "DELETE", "/vips/web/dips/4")
    assert status == 409 and "second chance" in body["error"]
    assert call(server, "DELETE", "/vips/web/dips/4?force=1")[0] == 200
    assert [d.id for d in core.config.vips[0].dips] == [1, 2, 3]
    assert len(changes) == 5  # the refused removals changed nothing


@pytest.mark.parametrize("method,path,body,status,message", [
    ("POST", "/vips/web/dips", {**NEW_DIP, "ports": "8000-9000"}, 400, "overlaps dips[0].ports 4096-8191"),
    ("POST", "/vips/web/dips", {**NEW_DIP, "id": 1}, 400, "duplicate id 1"),
    ("POST", "/vips/web/dips", {**NEW_DIP, "address": "banana"}, 400, "dip.address: 'banana' is not an IPv4"),
    ("POST", "/vips/nope/dips", NEW_DIP, 404, "no such VIP or DIP: 'nope'"),
    ("POST", "/vips/web/dips/9/drain", None, 404, "no such VIP or DIP: 9"),
    ("GET", "/nothing", None, 404, "no route for GET /nothing"),
])
def test_bad_requests_change_nothing(api, method, path, body, status, message):
    server, core, changes = api
    before = core.config
    got_status, got = call(server, method, path, body)
    assert got_status == status and message in got["error"]
    assert core.config is before and changes == []


def test_unsupported_method_is_refused(api):
    server, core, changes = api
    host, port = server.address
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/vips/web/dips/1", method="PUT"), timeout=5)
    assert e.value.code == 501 and changes == []


def test_metrics_report_per_dip_counters_and_connected_muxes(api):
    server, core, _ = api
    compiled = core.compiled["mux1"]
    stats = as_stats(compiled.flows)
    for s in stats:
        if s.cookie in compiled.flow_dip:
            s.packet_count, s.byte_count = 10, 1000
    assert core.mux_connected(0x1001, now=0.0)
    core.meter_config_reply(0x1001, as_meters(compiled.meters))
    core.group_desc_reply(0x1001, as_descs(compiled.groups))
    assert core.flow_stats_reply(0x1001, stats) == []
    buckets = [parser.OFPBucketCounter(packet_count=5, byte_count=500)] * len(compiled.group_dips[1][1])
    core.group_stats_reply(0x1001, [parser.OFPGroupStats(length=0, group_id=1, ref_count=1, packet_count=15,
                                                          byte_count=1500, duration_sec=1, duration_nsec=0,
                                                          bucket_stats=buckets)], now=0.1)
    status, body = call(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200
    owned = compiled.group_dips[1][1]
    # Each DIP's port-range flow counted 10 packets, each of its buckets 5.
    assert f'mptcplb_dip_packets_total{{dip="2",mux="mux1",vip="web"}} {10.0 + 5 * owned.count(2)}' in text
    assert f'mptcplb_dip_bytes_total{{dip="3",mux="mux1",vip="web"}} {1000.0 + 500 * owned.count(3)}' in text
    assert f'mptcplb_dip_slots{{dip="1",vip="web"}} {float(owned.count(1))}' in text
    assert 'mptcplb_dip_healthy{dip="1",vip="web"} 1.0' in text
    assert "mptcplb_muxes_connected 1.0" in text
    assert f'mptcplb_mux_flows{{mux="mux1"}} {float(len(stats))}' in text


def test_api_binds_loopback_by_default(raw_config):
    del raw_config["controller"]
    config = parse_config(raw_config)
    assert config.controller.api_host == "127.0.0.1" and config.controller.openflow_host == "127.0.0.1"


def test_unknown_bridge_is_left_alone(api):
    _, core, _ = api
    assert core.mux_connected(0x9999, now=0.0) == []


@pytest.mark.parametrize("length", ["-1", "abc", "1e3"])
def test_bad_content_length_is_refused(api, length):
    import socket

    server, core, changes = api
    with socket.create_connection(server.address, timeout=5) as s:
        s.sendall(f"POST /vips/web/dips HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode())
        reply = b""
        while chunk := s.recv(4096):  # the server closes after its HTTP/1.0 reply
            reply += chunk
        reply = reply.decode()
    assert reply.startswith("HTTP/1.0 400") and "is not a byte count" in reply
    assert changes == []



@pytest.mark.parametrize("method, path, headers, status, message", [
    ("GET", "/vips", {"Authorization": None}, 401, "Authorization: Bearer"),
    ("GET", "/vips", {"Authorization": "Bearer wrong-token-0123456789"}, 401, "API token"),
    ("GET", "/vips", {"Authorization": f"Basic {TOKEN}"}, 401, "Bearer"),
    ("POST", "/vips/web/dips/2/drain", {"Content-Type": "text/plain"}, 415, "application/json"),
    ("DELETE", "/vips/web/dips/2", {"Content-Type": None}, 415, "application/json"),
    ("POST", "/vips/web/dips/2/drain", {"Origin": "http://evil.example"}, 403, "is not this API's own"),
    ("GET", "/vips", {"Origin": "http://127.0.0.1.evil.example:80"}, 403, "Origin"),
    ("GET", "/metrics", {}, 404, "no route for GET /metrics"),  # metrics have a listener of their own
])
def test_unauthenticated_cross_origin_or_non_json_requests_are_refused(api, method, path, headers, status, message):
    server, core, changes = api
    before = core.config
    host, port = server.address
    sent = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", **headers}
    req = urllib.request.Request(f"http://{host}:{port}{path}", method=method,
                                 headers={k: v for k, v in sent.items() if v is not None})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == status and message in json.loads(e.value.read())["error"]
    if status == 401:
        assert e.value.headers["WWW-Authenticate"].startswith("Bearer")
    assert core.config is before and changes == []


def test_the_apis_own_origin_is_welcome_and_the_metrics_listener_serves_only_metrics(api):
    server, _, _ = api
    host, port = server.address
    assert call(server, "GET", "/vips", headers={"Origin": f"http://{host}:{port}"})[0] == 200
    status, body = call(server, "GET", "/metrics", headers={"Authorization": None})
    assert status == 200 and b"mptcplb_muxes_connected" in body
    mhost, mport = server.metrics.address
    for method, path in (("GET", "/vips"), ("POST", "/vips/web/dips/2/drain")):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(urllib.request.Request(f"http://{mhost}:{mport}{path}", method=method,
                                                          headers={"Authorization": f"Bearer {TOKEN}"}), timeout=5)
        assert e.value.code == 404


def test_the_token_file_must_be_private_and_hold_a_token(tmp_path):
    path = tmp_path / "token"
    write_token(str(path))
    assert oct(path.stat().st_mode & 0o777) == "0o600" and len(read_token(str(path))) >= 32
    with pytest.raises(FileExistsError):
        write_token(str(path))  # never overwrites one in use
    path.chmod(0o644)
    with pytest.raises(TokenFileError, match="readable by others"):
        read_token(str(path))
    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(TokenFileError, match="no token of at least 16"):
        read_token(str(short))
    with pytest.raises(TokenFileError, match="No such file"):
        read_token(str(tmp_path / "absent"))
