"""One DipHostSetup driven over stdin, for test_dip_agent: ``host_setup_driver.py VIP ANNOUNCE_PORT [VIP6]``.

Run inside the DIP's namespace. Each stdin line names a method to call
(apply, undo); each answer is ``done``.
"""

import logging
import sys

from dip_agent.host_setup import DipHostSetup

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
setup = DipHostSetup(sys.argv[1], int(sys.argv[2]), vip6=sys.argv[3] if len(sys.argv) > 3 else None)
for line in sys.stdin:
    getattr(setup, line.strip())()
    print("done", flush=True)
