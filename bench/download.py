"""Long MPTCP downloads through the demo topology, the way a user would run one.

Stock nginx serves a file on every DIP and stock curl fetches it through the
VIP, both made MPTCP by ``mptcpize`` (Debian's mptcpd package: it preloads a
library that turns their TCP sockets into MPTCP ones). The file is random,
and the copy curl saved is compared with it byte for byte by SHA-256. The
DIPs' own kernel counters say which DIP served the download and that every
join found its token there.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time

from mininet_topos.datacenter import FABRIC_NET, SERVICE_PORT, VIP
from mininet_topos.harness import wait_for

NGINX_CONF = """\
worker_processes 1;
daemon off;
pid {workdir}/nginx-d{dip}.pid;
error_log {workdir}/nginx-d{dip}.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    sendfile on;
    server {{
        listen {port};
        root {root};
    }}
}}
"""

# What says the download really was multipath, and steered: read on every DIP.
DIP_COUNTERS = ("MPTcpExtMPCapableSYNRX", "MPTcpExtMPJoinSynRx", "MPTcpExtMPJoinAckRx",
                "MPTcpExtMPJoinNoTokenFound", "TcpRetransSegs", "TcpOutSegs")
CLIENT_COUNTERS = ("TcpRetransSegs", "TcpOutSegs", "TcpInSegs")


def nstat(host) -> dict[str, int]:
    """Absolute kernel counters in a Mininet host's namespace."""
    out = host.cmd("nstat -az")
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)", out, re.M)}


def delta(after: dict[str, int], before: dict[str, int], keys) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


def require_stock_tools() -> None:
    for tool in ("nginx", "curl", "mptcpize"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: `make bench` installs nginx-light, curl and mptcpd")


class Blob:
    """A random file in tmpfs that every DIP's nginx serves, and its SHA-256; removed on exit."""

    def __init__(self, size: int):
        self.size = size
        self.root = ""
        self.path = ""
        self.sha256 = ""

    def __enter__(self) -> Blob:
        # A fresh directory nobody else could have prepared; nginx's workers (nobody) may read it.
        self.root = tempfile.mkdtemp(prefix="mptcp-lb-bench-", dir="/dev/shm")
        os.chmod(self.root, 0o755)
        self.path = os.path.join(self.root, "blob")
        digest = hashlib.sha256()
        with open(self.path, "wb") as f:
            for _ in range(self.size // (1 << 20)):
                chunk = os.urandom(1 << 20)
                digest.update(chunk)
                f.write(chunk)
        self.sha256 = digest.hexdigest()
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class StockWebServers:
    """nginx under mptcpize on every DIP of a running ``Datacenter`` (started with ``echo=False``)."""

    def __init__(self, dc, blob: Blob):
        self.dc = dc
        self.blob = blob
        self.procs = []

    def __enter__(self) -> StockWebServers:
        require_stock_tools()
        try:
            for i in range(1, self.dc.n_dips + 1):
                conf = os.path.join(self.dc.workdir, f"nginx-d{i}.conf")
                with open(conf, "w") as f:
                    f.write(NGINX_CONF.format(workdir=self.dc.workdir, dip=i, port=SERVICE_PORT, root=self.blob.root))
                self.procs.append(self.dc.dip_host(i).popen(["mptcpize", "run", "nginx", "-c", conf],
                                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for i in range(1, self.dc.n_dips + 1):
                host = self.dc.dip_host(i)
                wait_for(f"nginx on d{i}", lambda h=host: f":{SERVICE_PORT} " in h.cmd("ss -Mltn"), 15)
            self.dc.wait_healthy()  # the health checks took the DIPs down until nginx served
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs = []


def download(dc, client: str, servers: StockWebServers, timeout: float = 120) -> dict:
    """One curl download of the served file through the VIP; goodput, verification and counters."""
    host = dc.host(client)
    dips = [dc.dip_host(i) for i in range(1, dc.n_dips + 1)]
    blob = servers.blob
    saved = os.path.join(blob.root, f"got-{client}")
    before = {"client": nstat(host), **{f"d{i}": nstat(d) for i, d in enumerate(dips, start=1)}}
    started = time.monotonic()
    out = host.cmd(f"timeout {timeout} mptcpize run curl -sS -o {saved} -w '%{{size_download}} %{{time_total}}' "
                   f"http://{VIP}:{SERVICE_PORT}/blob")
    wall = time.monotonic() - started
    after = {"client": nstat(host), **{f"d{i}": nstat(d) for i, d in enumerate(dips, start=1)}}
    try:
        nbytes, seconds = out.strip().split()[-2:]
        nbytes, seconds = int(nbytes), float(seconds)
    except ValueError:
        sockets = "\n".join(f"{h.name}:\n{h.cmd('ss -tinmeM')[-3000:]}" for h in (host, *dips))
        raise RuntimeError(f"curl from {client} failed after {wall:.0f}s: {out.strip()[-500:]!r}\n{sockets}") from None
    digest = hashlib.sha256()
    with open(saved, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    os.unlink(saved)
    per_dip = {name: delta(after[name], before[name], DIP_COUNTERS) for name in before if name != "client"}
    serving = [name for name, c in per_dip.items() if c["MPTcpExtMPCapableSYNRX"]]
    mb = nbytes / 1e6
    dip_retrans = sum(c["TcpRetransSegs"] for c in per_dip.values())
    client_counts = delta(after["client"], before["client"], CLIENT_COUNTERS)
    return {
        "bytes": nbytes, "seconds": seconds, "wall_seconds": wall, "gbps": nbytes * 8 / seconds / 1e9,
        "verified": nbytes == blob.size and digest.hexdigest() == blob.sha256,
        "serving_dips": serving,
        "joins_at_serving_dip": sum(per_dip[n]["MPTcpExtMPJoinAckRx"] for n in serving),
        "joins_elsewhere": sum(c["MPTcpExtMPJoinSynRx"] for n, c in per_dip.items() if n not in serving),
        "join_token_not_found": sum(c["MPTcpExtMPJoinNoTokenFound"] for c in per_dip.values()),
        "sender_retrans_segs": dip_retrans, "sender_retrans_per_mb": dip_retrans / mb,
        "client_retrans_segs": client_counts["TcpRetransSegs"],
        "client_retrans_per_mb": client_counts["TcpRetransSegs"] / mb,
        "per_dip": per_dip,
    }


def route_vip_to(dc, dip: int | None) -> None:
    """Send the VIP through the MUXes (None: the ECMP route) or straight over the fabric to one DIP.

    The straight route is plain L2 forwarding on the same fabric bridge and
    ports, with no MUX: the baseline the load-balanced download is set against.
    """
    if dip is None:
        dc.router.set_vip_route()
    else:
        dc.router.cmd(f"ip route replace {VIP}/32 via {FABRIC_NET}.{dip} dev {dc.prefix}r0-eth4")


def warm_up(dc, client: str) -> None:
    """Fetch the first 8 MiB once, unmeasured: ARP, datapath flows and nginx's worker are then in place."""
    out = dc.host(client).cmd(f"timeout 60 mptcpize run curl -sS -r 0-8388607 -o /dev/null -w '%{{size_download}}' "
                              f"http://{VIP}:{SERVICE_PORT}/blob")
    if not out.strip().endswith("8388608"):
        raise RuntimeError(f"warm-up download from {client} failed: {out.strip()[-500:]!r}")


def checked_download(dc, client: str, servers: StockWebServers) -> dict:
    """``download``, refusing a result that was not every byte, or whose joins missed their DIP."""
    result = download(dc, client, servers)
    if not result["verified"]:
        raise RuntimeError(f"download from {client} arrived corrupted or short: {result}")
    if result["join_token_not_found"] or result["joins_elsewhere"] or len(result["serving_dips"]) != 1:
        raise RuntimeError(f"download from {client} was not steered to one DIP: {result}")
    return result
