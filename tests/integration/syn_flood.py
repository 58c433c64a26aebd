"""Send SYN+MP_CAPABLE to VIP:PORT from random source ports: ``syn_flood.py VIP PORT COUNT SECONDS``.

Run inside the client's namespace; prints how many SYNs went out and how
many seconds sending them took (scapy may need longer than asked). The
kernel's RSTs for the SYN/ACKs that come back are harmless here.
"""

import sys
import time

from scapy.all import IP, TCP, conf, send

MPC_SYN = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 0)), ("NOP", None), ("WScale", 7),
           (30, bytes([0x01, 0x81]))]


def main() -> None:
    vip, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    conf.verb = 0
    packets = [IP(dst=vip) / TCP(sport=20000 + i, dport=port, flags="S", seq=i, options=MPC_SYN)
               for i in range(count)]
    started = time.monotonic()
    send(packets, inter=seconds / count)
    print(count, time.monotonic() - started)


if __name__ == "__main__":
    main()
