"""The DIP side of test_dip_token, driven over stdin: ``dip_server_driver.py CONFIG_JSON``.

Run inside the server namespace. It holds a DipPrograms and an MPTCP echo
server that records, per accepted connection, what the server kernel says
about it (token, subflows, negotiated options). Each stdin line is a JSON
command (apply, seed, flow, stats, conns, undo); each answer is one JSON
line, ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": traceback}``.
"""

import json
import logging
import socket
import struct
import sys
import threading
import traceback

from dip_agent.programs import DipPrograms
from mptcp_lb import echo_protocol
from mptcp_lb.mptcp_codec import key_to_token
from mptcp_lb.mptcp_sockopt import (MPTCP_TCPINFO, SOL_MPTCP, _TCP_INFO_SIZE, _subflow_entries, mptcp_socket,
                                    subflow_addrs)

MPTCP_INFO = 1


def tcpinfo(conn: socket.socket) -> list[dict]:
    raw, copied = _subflow_entries(conn, MPTCP_TCPINFO, _TCP_INFO_SIZE)
    size_user = struct.unpack_from("=4I", raw)[3]
    return [{"state": raw[o], "options": raw[o + 5], "snd_wscale": raw[o + 6] & 15,
             "rcv_wscale": raw[o + 6] >> 4} for o in range(16, copied - size_user + 1, size_user)]


class RecordingServer:
    """An MPTCP echo server on the VIP's port that records each connection as the kernel sees it."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        ipv6 = cfg.get("vip6") is not None  # then an IPv6 listener, which takes IPv4 too
        self.listener = mptcp_socket(socket.AF_INET6 if ipv6 else socket.AF_INET)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("::" if ipv6 else "0.0.0.0", cfg["port"]))
        self.listener.listen(128)
        self.listener.settimeout(0.1)
        self.acceptor = threading.Thread(target=self.accept_loop, daemon=True)

    def serve(self, conn: socket.socket, peer) -> None:
        rec = {"peer": f"{peer[0]}:{peer[1]}", "family": conn.family.name}
        try:
            conn.settimeout(30)
            nbytes, digest = echo_protocol.read_request(conn)
            subflows = subflow_addrs(conn)  # the client sent only once the DIP had answered its joins
            try:
                rec["token"] = struct.unpack_from("=I", conn.getsockopt(SOL_MPTCP, MPTCP_INFO, 96), 12)[0]
            except OSError:
                rec["token"] = None
            rec.update(bytes=nbytes, subflows=subflows, tcpinfo=tcpinfo(conn))
            conn.sendall(echo_protocol.encode_reply(
                echo_protocol.make_reply(self.cfg["server_id"], nbytes, digest, subflows)))
        except Exception as e:
            rec["error"] = repr(e)
        finally:
            conn.close()
            with self.lock:
                self.records.append(rec)

    def accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self.serve, args=(conn, peer), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        if self.acceptor.is_alive():
            self.acceptor.join()
        self.listener.close()


def main() -> None:
    cfg = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    setup = DipPrograms(cfg["ifnames"], cfg["vip"], cfg["port"], cfg["server_id"], cfg["mode"],
                          cfg.get("slices"), cfg.get("slice_bits"), syncookies=cfg["syncookies"], vip6=cfg.get("vip6"),
                          self_address=cfg.get("self_address", "0.0.0.0"), peers6=cfg.get("peers6"),
                          stamp=cfg.get("stamp", True))
    server = RecordingServer(cfg)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            cmd, out = req["cmd"], None
            if cmd == "apply":
                setup.apply()
                server.acceptor.start()
            elif cmd == "seed":
                setup.seed_key(req["client_ip"], req["client_port"], bytes.fromhex(req["key"]))
            elif cmd == "flow":
                st = setup.flow(req["client_ip"], req["client_port"])
                out = None if st is None else {"key_token": key_to_token(st.key), "key_isn": st.key_isn,
                                               "has_key": st.has_key, "ack_pending": st.ack_pending,
                                               "max_tsval": st.max_tsval}
            elif cmd == "stats":
                out = setup.stats()
                if setup.pool is not None:
                    out["pool_next"] = setup.pool.next_index()
                    out["pool_refilled"] = setup.pool.refilled
            elif cmd == "conns":
                with server.lock:
                    out = list(server.records)
            elif cmd == "undo":
                server.close()
                setup.undo()
            print(json.dumps({"ok": True, "result": out}), flush=True)
        except Exception:
            print(json.dumps({"ok": False, "error": traceback.format_exc()}), flush=True)


if __name__ == "__main__":
    main()
