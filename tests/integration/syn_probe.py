"""Send one SYN with the given TCP options: ``syn_probe.py VIP PORT SPORT SEQ OPTIONS_HEX``.

Run inside a client namespace. Prints the answer as JSON (its flags, ack
and options) or null when none came.
"""

import json
import sys

from scapy.all import IP, TCP, conf, sr1

from tests.packets import tcp_segment


def main() -> None:
    vip, (port, sport, seq), options = sys.argv[1], map(int, sys.argv[2:5]), bytes.fromhex(sys.argv[5])
    conf.verb = 0
    reply = sr1(IP(tcp_segment("S", options, src=None, dst=vip, sport=sport, dport=port, seq=seq)), timeout=5)
    if reply is None or TCP not in reply:
        print(json.dumps(None))
    else:
        print(json.dumps({"flags": str(reply[TCP].flags), "ack": reply[TCP].ack,
                          "options": [[k, v.hex() if isinstance(v, bytes) else v] for k, v in reply[TCP].options]}))


if __name__ == "__main__":
    main()
