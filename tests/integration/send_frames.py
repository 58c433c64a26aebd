"""Send Ethernet frames out of an interface: ``send_frames.py IFACE FRAME_HEX...``; run inside a namespace."""

import sys

from scapy.all import Ether, sendp


def main() -> None:
    sendp([Ether(bytes.fromhex(h)) for h in sys.argv[2:]], iface=sys.argv[1], verbose=False)


if __name__ == "__main__":
    main()
