"""Act as a client that ignores the C flag: send SYN+MP_JOIN to VIP:service-port.

Run inside the client's namespace: ``python join_probe.py VIP PORT COUNT``.
Prints a JSON list with the TCP flags of each answer (or null if none).

The source ports lie below the namespace's ephemeral range, so no probe
shares a 4-tuple with a connection the client's kernel opened meanwhile: a
DIP answers a SYN on an established 4-tuple with a challenge ACK, not a
reset.
"""

import json
import os
import sys

from scapy.all import IP, TCP, conf, sr1


def mp_join_syn(token: bytes, nonce: bytes) -> tuple:
    # RFC 8684 3.2: kind 30, length 12, subtype MP_JOIN (1) in the high nibble, address id 0
    return (30, bytes([0x10, 0x00]) + token + nonce)


def main() -> None:
    vip, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        first_ephemeral = int(f.read().split()[0])
    base = first_ephemeral - 1000
    if base < 1024 or count > 1000:
        raise SystemExit(f"no room for {count} probe ports below the ephemeral range ({first_ephemeral})")
    conf.verb = 0
    answers = []
    for i in range(count):
        syn = IP(dst=vip) / TCP(sport=base + i, dport=port, flags="S", seq=1000 + i,
                                options=[mp_join_syn(os.urandom(4), os.urandom(4))])
        reply = sr1(syn, timeout=2)
        answers.append(str(reply[TCP].flags) if reply is not None and TCP in reply else None)
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
