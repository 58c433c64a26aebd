"""The echo framing shared by dip_agent and mptcp_lb.traffic."""

import hashlib
import socket
import struct
import threading

import pytest

from mptcp_lb import echo_protocol as ep


def test_header_roundtrip():
    for n in (0, 1, 65536, ep.DEFAULT_MAX_PAYLOAD):
        assert ep.decode_header(ep.encode_header(n)) == n
    assert ep.encode_header(258) == b"\x00\x00\x00\x00\x00\x00\x01\x02"


def test_header_rejects_bad_input():
    with pytest.raises(ep.ProtocolError, match="exceeds the maximum 10"):
        ep.decode_header(ep.encode_header(11), max_payload=10)
    with pytest.raises(ep.ProtocolError, match="header is 7 bytes"):
        ep.decode_header(b"\x00" * 7)
    with pytest.raises(ValueError):
        ep.encode_header(-1)
    with pytest.raises(ValueError):
        ep.encode_header(1 << 64)


def test_reply_roundtrip():
    reply = ep.make_reply(3, 5, "ab" * 32, [("10.0.0.100:80", "10.77.0.1:40000"),
                                             ("10.0.0.100:4096", "10.77.1.1:40001")], token=0xDEADBEEF)
    line = ep.encode_reply(reply)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert ep.decode_reply(line) == {
        "dip": 3, "bytes": 5, "sha256": "ab" * 32, "token": 0xDEADBEEF,
        "subflows": [{"local": "10.0.0.100:80", "remote": "10.77.0.1:40000"},
                     {"local": "10.0.0.100:4096", "remote": "10.77.1.1:40001"}]}


@pytest.mark.parametrize("line, problem", [
    (b"not json\n", "not JSON"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"bytes": 1, "sha256": "x", "subflows": []}\n', "'dip'"),
    (b'{"dip": true, "bytes": 1, "sha256": "x", "subflows": []}\n', "'dip'"),
    (b'{"dip": 1, "bytes": "1", "sha256": "x", "subflows": []}\n', "'bytes'"),
    (b'{"dip": 1, "bytes": 1, "sha256": 7, "subflows": []}\n', "'sha256'"),
    (b'{"dip": 1, "bytes": 1, "sha256": "x", "subflows": [{"local": "a"}]}\n', r"subflows\[0\]"),
])
def test_decode_reply_names_the_bad_field(line, problem):
    with pytest.raises(ep.ProtocolError, match=problem):
        ep.decode_reply(line)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_request_roundtrip_over_a_socket(pair):
    client, server = pair
    payload = bytes(range(256)) * 1000  # larger than one recv chunk
    sender = threading.Thread(target=lambda: (ep.send_request(client, payload), client.shutdown(socket.SHUT_WR)))
    sender.start()
    assert ep.read_request(server) == (len(payload), hashlib.sha256(payload).hexdigest())
    sender.join()


def test_empty_request(pair):
    client, server = pair
    ep.send_request(client, b"")
    assert ep.read_request(server) == (0, hashlib.sha256(b"").hexdigest())


def test_read_request_rejects_short_payload(pair):
    client, server = pair
    client.sendall(struct.pack("!Q", 10) + b"12345")
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(ep.ProtocolError, match="after 5 of 10 payload bytes"):
        ep.read_request(server)


def test_read_request_rejects_short_header(pair):
    client, server = pair
    client.sendall(b"\x00\x00\x01")
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(ep.ProtocolError, match="after 3 of 8 bytes"):
        ep.read_request(server)


def test_read_request_rejects_absurd_length_before_reading_it(pair):
    client, server = pair
    client.sendall(struct.pack("!Q", 1 << 40))
    with pytest.raises(ep.ProtocolError, match="exceeds the maximum"):
        ep.read_request(server, max_payload=1 << 30)


def test_reply_over_a_socket(pair):
    client, server = pair
    reply = ep.make_reply(1, 0, "00" * 32, [])
    server.sendall(ep.encode_reply(reply))
    server.shutdown(socket.SHUT_WR)
    assert ep.read_reply(client) == reply


def test_read_reply_rejects_truncated_line(pair):
    client, server = pair
    server.sendall(b'{"dip": 1')
    server.shutdown(socket.SHUT_WR)
    with pytest.raises(ep.ProtocolError, match="not a complete line"):
        ep.read_reply(client)


def test_the_server_reads_the_client_out_before_it_closes(pair):
    client, server = pair
    client.sendall(b"late")
    client.shutdown(socket.SHUT_WR)
    assert ep.read_to_eof(server) == 4
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"y" * 100)
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ep.ProtocolError, match="more than 10 bytes"):
            ep.read_to_eof(b, limit=10)
