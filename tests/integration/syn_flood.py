"""Send SYN+MP_CAPABLE to VIP:PORT from random source ports, paced: ``syn_flood.py VIP PORT COUNT SECONDS [SPOOF_NET]``.

Run inside a client's namespace. With SPOOF_NET (a CIDR such as
198.18.0.0/15) every SYN comes from a random address in it, as a spoofed
flood does; else from the route's own source address. The SYNs are built
first and then written to a raw socket in small paced batches, so the rate
holds at thousands per second. Prints how many SYNs went out and how many
seconds sending them took. The answers to spoofed SYNs go to addresses
nobody has; those to the client's own address are reset by its kernel.
A first line, ``built COUNT``, says the SYNs are built and sending starts
(building them with scapy takes seconds, and longer on a loaded machine).
"""

import ipaddress
import random
import socket
import sys
import time

from tests.packets import MSS, NOP, SACK_PERM, WSCALE, mp_capable, tcp_segment, timestamp

MPC_SYN = MSS + SACK_PERM + timestamp(1, 0) + NOP + WSCALE + mp_capable(flags=0x81)
BATCH = 10


def source_address(vip: str) -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((vip, 9))
    return probe.getsockname()[0]


def main() -> None:
    vip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    spoof = ipaddress.ip_network(sys.argv[5]) if len(sys.argv) > 5 else None
    own = source_address(vip)
    rng = random.Random(0x4D4C)
    packets = []
    for i in range(count):
        src = str(spoof[rng.randrange(spoof.num_addresses)]) if spoof else own
        packets.append(tcp_segment("S", MPC_SYN, src=src, dst=vip, sport=rng.randrange(1024, 65536), dport=port,
                                   seq=rng.getrandbits(32)))
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL: our source address
    print("built", count, flush=True)
    started = time.monotonic()
    for i in range(0, count, BATCH):
        due = started + i * seconds / count
        while (late := due - time.monotonic()) > 0:
            time.sleep(late)
        for packet in packets[i:i + BATCH]:
            sock.sendto(packet, (vip, 0))
    print(count, time.monotonic() - started)


if __name__ == "__main__":
    main()
