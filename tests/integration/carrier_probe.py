"""Send one SYN with MP_CAPABLE, timestamps and a key carrier: ``carrier_probe.py VIP PORT SPORT SEQ CARRIER_HEX``.

Run inside the client namespace. Prints the answer as JSON (its flags, ack
and options) or null when none came.
"""

import json
import sys

from scapy.all import IP, TCP, conf, sr1

from tests.packets import MSS, NOP, SACK_PERM, WSCALE, mp_capable, tcp_segment, timestamp


def main() -> None:
    vip, (port, sport, seq), carrier = sys.argv[1], map(int, sys.argv[2:5]), bytes.fromhex(sys.argv[5])
    conf.verb = 0
    opts = (MSS + NOP + WSCALE + SACK_PERM + mp_capable(flags=0x81) + NOP + NOP + timestamp(12345, 0) + NOP + NOP
            + carrier)  # 40 bytes
    reply = sr1(IP(tcp_segment("S", opts, src=None, dst=vip, sport=sport, dport=port, seq=seq)), timeout=5)
    if reply is None or TCP not in reply:
        print(json.dumps(None))
    else:
        print(json.dumps({"flags": str(reply[TCP].flags), "ack": reply[TCP].ack,
                          "options": [[k, v.hex() if isinstance(v, bytes) else v] for k, v in reply[TCP].options]}))


if __name__ == "__main__":
    main()
