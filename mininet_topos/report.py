"""Turn per-connection results (as the DIPs reported them) into the demo report."""

from __future__ import annotations

from collections import Counter

SPREAD_JUDGED_BELOW = 1e-6  # a DIP left out this unlikely by the hash's luck means the hash does not spread


def chance_a_dip_is_left_out(conns: int, shares: dict[int, float]) -> float:
    """At most how likely ``conns`` connections leave some DIP without one, DIP d taking each with ``shares[d]``."""
    return min(1.0, sum((1.0 - share) ** conns for share in shares.values()))


def connection_entry(result: dict) -> dict:
    """One connection: its subflows as the DIP that terminated them saw them."""
    if "error" in result:
        return {"subflows": [], "bytes_sent": result.get("bytes_sent", 0), "verified": False,
                "error": result["error"]}
    reply = result["reply"]
    subflows = [{"client": sf["remote"], "vip": sf["local"], "dip": reply["dip"]} for sf in reply["subflows"]]
    return {"subflows": subflows, "bytes_sent": result["bytes_sent"], "verified": bool(result["verified"]),
            "client_subflows": result.get("client_subflows"), "client_host": result.get("client_host"),
            "token": reply.get("token")}


def summarize(connections: list[dict], dip_ids: list[int], shares: dict[int, float] | None = None) -> dict:
    """Per-DIP load and the pass/fail facts the demo promises.

    Connections land on DIPs by hash, so a few of them may miss a DIP by luck:
    ``spread_ok`` fails only when that was less likely than
    ``SPREAD_JUDGED_BELOW``, given each DIP's share of the slots (``shares``;
    equal shares if not given). With fewer connections the spread is reported,
    not judged.
    """
    conns_per_dip: Counter = Counter()
    subflows_per_dip: Counter = Counter()
    bytes_per_dip: Counter = Counter()
    for c in connections:
        dips = {sf["dip"] for sf in c["subflows"]}
        for sf in c["subflows"]:
            subflows_per_dip[sf["dip"]] += 1
        if len(dips) == 1:
            (d,) = dips
            conns_per_dip[d] += 1
            bytes_per_dip[d] += c["bytes_sent"]
    all_used = all(conns_per_dip[d] > 0 for d in dip_ids)
    chance = chance_a_dip_is_left_out(len(connections), shares if shares is not None
                                      else {d: 1 / len(dip_ids) for d in dip_ids})
    return {
        "per_dip": {str(d): {"connections": conns_per_dip[d], "subflows": subflows_per_dip[d],
                             "bytes": bytes_per_dip[d]} for d in dip_ids},
        "all_verified": all(c["verified"] for c in connections),
        "all_multipath": all(len(c["subflows"]) >= 2 for c in connections),
        "all_one_dip": all(len({sf["dip"] for sf in c["subflows"]}) == 1 for c in connections),
        "all_dips_used": all_used,
        "chance_a_dip_left_out": chance,
        "spread_ok": all_used or chance >= SPREAD_JUDGED_BELOW,
    }


def format_table(summary: dict) -> str:
    lines = [f"{'DIP':>4} {'conns':>6} {'subflows':>9} {'bytes':>12}"]
    for d, row in summary["per_dip"].items():
        lines.append(f"{d:>4} {row['connections']:>6} {row['subflows']:>9} {row['bytes']:>12}")
    return "\n".join(lines)


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dips = list(summary["per_dip"])
    conns = [summary["per_dip"][d]["connections"] for d in dips]
    subflows = [summary["per_dip"][d]["subflows"] for d in dips]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(dips))
    ax.bar([x - 0.2 for x in xs], conns, width=0.4, label="connections")
    ax.bar([x + 0.2 for x in xs], subflows, width=0.4, label="subflows")
    ax.set_xticks(list(xs), [f"DIP {d}" for d in dips])
    ax.set_ylabel("count (as seen by each DIP)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
