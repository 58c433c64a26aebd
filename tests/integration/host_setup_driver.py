"""One DipHostSetup driven over stdin, for test_dip_agent: ``host_setup_driver.py VIP ANNOUNCE_PORT``.

Run inside the DIP's namespace. Each stdin line names a method to call
(apply, undo); each answer is ``done``.
"""

import logging
import sys

from dip_agent.host_setup import DipHostSetup

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
setup = DipHostSetup(sys.argv[1], int(sys.argv[2]))
for line in sys.stdin:
    getattr(setup, line.strip())()
    print("done", flush=True)
