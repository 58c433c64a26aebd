"""Stock servers and clients on a running ``Datacenter``: nginx on every DIP, curl on a client, both MPTCP.

Neither was written for mptcp-lb: ``mptcpize`` (Debian's mptcpd package)
preloads a library that turns their TCP sockets into MPTCP ones, which is
how an unmodified application runs behind the DIP agent. The served file
is random; the copy curl saved is compared with it byte for byte by
SHA-256, and the DIPs' own kernel counters say which DIP served the
download and that every join found its token there.

Until nginx serves, the health checks hold the DIPs down; ``StockWebServers``
waits for them to come up and for the slots' move back to end, which takes
the Datacenter's ``transition_time`` (300 s by default: pass a short one).

    with Datacenter(echo=False, transition_time=5) as dc, Blob(64 << 20) as blob, StockWebServers(dc, blob) as web:
        result = download(dc, "c2", web)
        assert result["verified"] and result["join_token_not_found"] == 0
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time

from mininet_topos.datacenter import SERVICE_PORT, VIP

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
STOCK_TOOLS = ("nginx", "curl", "mptcpize")  # Debian: nginx-light, curl, mptcpd

# What says the download really was multipath, and steered: read on every DIP.
DIP_COUNTERS = ("MPTcpExtMPCapableSYNRX", "MPTcpExtMPJoinSynRx", "MPTcpExtMPJoinAckRx",
                "MPTcpExtMPJoinNoTokenFound", "TcpRetransSegs", "TcpOutSegs", "IcmpInDestUnreachs")
CLIENT_COUNTERS = ("TcpRetransSegs", "TcpOutSegs", "TcpInSegs", "MPTcpExtMPJoinSynAckRx")


def missing_stock_tools() -> list[str]:
    return [tool for tool in STOCK_TOOLS if shutil.which(tool) is None]


def require_stock_tools() -> None:
    missing = missing_stock_tools()
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found: `make deps` installs nginx-light, curl and mptcpd")


class DownloadFailed(RuntimeError):
    """curl gave no result: it failed or timed out. The message holds every host's sockets (``ss -tinmeM``)."""


def _delta(after: dict[str, int], before: dict[str, int], keys) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in keys}


class Blob:
    """A random file in tmpfs that every DIP's nginx serves, and its SHA-256; removed on exit."""

    def __init__(self, size: int):
        if size <= 0 or size % (1 << 20):
            raise ValueError(f"blob size {size} is not a positive multiple of 1 MiB")
        self.size = size
        self.root = ""
        self.path = ""
        self.sha256 = ""

    def __enter__(self) -> Blob:
        # A fresh directory nobody else could have prepared; nginx's workers (nobody) may read it.
        self.root = tempfile.mkdtemp(prefix="mptcp-lb-blob-", dir="/dev/shm")
        os.chmod(self.root, 0o755)
        self.path = os.path.join(self.root, "blob")
        digest = hashlib.sha256()
        with open(self.path, "wb") as f:
            for _ in range(self.size >> 20):
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
        from mininet_topos.harness import wait_for

        require_stock_tools()
        try:
            for i in self.dc.dip_ids():
                conf = os.path.join(self.dc.workdir, f"nginx-d{i}.conf")
                with open(conf, "w") as f:
                    f.write(NGINX_CONF.format(workdir=self.dc.workdir, dip=i, port=SERVICE_PORT, root=self.blob.root))
                self.procs.append(self.dc.dip_host(i).popen(["mptcpize", "run", "nginx", "-c", conf],
                                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            for i in self.dc.dip_ids():
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


def download(dc, client: str, servers: StockWebServers, timeout: float = 120, rate: int = 0) -> dict:
    """One curl download of the served file through the VIP: goodput, verification and kernel counters.

    ``rate`` (bytes/s, 0: none) makes curl read slowly, so the download is
    in flight for a while (a scenario's failure happens during it).
    """
    dips = [f"d{i}" for i in dc.dip_ids()]
    blob = servers.blob
    saved = os.path.join(blob.root, f"got-{client}")
    before = {"client": dc.nstat(client), **{d: dc.nstat(d) for d in dips}}
    limit = f"--limit-rate {rate} " if rate else ""
    started = time.monotonic()
    out = dc.host(client).cmd(f"timeout {timeout} mptcpize run curl -sS {limit}-o {saved} "
                              f"-w '%{{size_download}} %{{time_total}}' http://{VIP}:{SERVICE_PORT}/blob")
    wall = time.monotonic() - started
    after = {"client": dc.nstat(client), **{d: dc.nstat(d) for d in dips}}
    try:
        nbytes, seconds = out.strip().split()[-2:]
        nbytes, seconds = int(nbytes), float(seconds)
    except ValueError:
        if os.path.exists(saved):
            os.unlink(saved)
        sockets = "\n".join(f"{h}:\n{dc.host(h).cmd('ss -tinmeM')[-3000:]}" for h in (client, *dips))
        raise DownloadFailed(f"curl from {client} failed after {wall:.0f}s: {out.strip()[-500:]!r}\n{sockets}") from None
    digest = hashlib.sha256()
    with open(saved, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    os.unlink(saved)
    per_dip = {d: _delta(after[d], before[d], DIP_COUNTERS) for d in dips}
    serving = [d for d, c in per_dip.items() if c["MPTcpExtMPCapableSYNRX"]]
    mb = nbytes / 1e6
    dip_retrans = sum(c["TcpRetransSegs"] for c in per_dip.values())
    client_counts = _delta(after["client"], before["client"], CLIENT_COUNTERS)
    return {
        "bytes": nbytes, "seconds": seconds, "wall_seconds": wall, "gbps": nbytes * 8 / seconds / 1e9,
        "verified": nbytes == blob.size and digest.hexdigest() == blob.sha256,
        "serving_dips": serving,
        "joins_at_serving_dip": sum(per_dip[d]["MPTcpExtMPJoinAckRx"] for d in serving),
        "joins_elsewhere": sum(c["MPTcpExtMPJoinSynRx"] for d, c in per_dip.items() if d not in serving),
        "join_token_not_found": sum(c["MPTcpExtMPJoinNoTokenFound"] for c in per_dip.values()),
        "sender_retrans_segs": dip_retrans, "sender_retrans_per_mb": dip_retrans / mb,
        "client_retrans_segs": client_counts["TcpRetransSegs"],
        "client_retrans_per_mb": client_counts["TcpRetransSegs"] / mb,
        "per_dip": per_dip,
    }


__all__ = ["Blob", "DownloadFailed", "StockWebServers", "download", "missing_stock_tools", "require_stock_tools", "STOCK_TOOLS"]
