"""Paced uploads in flight through the demo topology, and the kernel counters that judge them.

Shared by the scenario tests (test_scenarios.py, test_bgp.py): the client is
the sender and is rate-limited, so every byte crosses a MUX while the event
under test happens. Port mode runs the client that follows ADD_ADDR (c1),
token mode the stock one that joins the service port (c2).
"""

from __future__ import annotations

from mininet_topos.harness import wait_for

CLIENT = {"port": ("c1", 3), "token": ("c2", 2)}  # mode -> (client, subflows per connection)
UPLOADS, SIZE, RATE = 12, 600_000, 100_000  # 6 s each, all at once


def client_of(dc) -> tuple[str, int]:
    return CLIENT[dc.mode]


def counters(dc, client: str | None = None) -> dict:
    """nstat of the client (key "client"; default: the mode's) and of every DIP (key: its id)."""
    client = client or client_of(dc)[0]
    return {"client": dc.nstat(client), **{i: dc.nstat(f"d{i}") for i in dc.all_dips}}


def grown(before: dict, after: dict, counter: str) -> dict:
    """How far ``counter`` grew on each host of ``counters``: keys "client", "d1", "d2", ..."""
    return {("client" if k == "client" else f"d{k}"): after[k].get(counter, 0) - before[k].get(counter, 0)
            for k in before}


def resets(before: dict, after: dict) -> dict:
    """Live subflows reset, counted where the reset arrived: TcpEstabResets on the client and on each DIP."""
    return grown(before, after, "TcpEstabResets")


def rsts_sent(before: dict, after: dict) -> dict:
    """Resets each DIP sent, for any reason (TcpOutRsts)."""
    return {k: v for k, v in grown(before, after, "TcpOutRsts").items() if k != "client"}


def uploads(dc, conns: int = UPLOADS, ipv6: bool = False, client: tuple[str, int] | None = None):
    """Rate-limited uploads, returned once every one is established on some DIP (data in flight).

    ``client`` is (host, subflows per connection), by default the mode's;
    ``ipv6`` sends to the VIP's IPv6 address.
    """
    client, subflows = client or client_of(dc)
    run = dc.start_traffic(conns, SIZE, min_subflows=subflows, parallel=conns, timeout=30, client=client,
                           rate=RATE, ipv6=ipv6)
    per_conn = 1 if client == "c1" else subflows  # c1's joins go to its DIP's own port, c2's to the service's
    wait_for(f"{conns} uploads established", lambda: sum(dc.established(i) for i in dc.all_dips)
             >= conns * per_conn, 30)
    return run
