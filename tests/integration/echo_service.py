"""Serve the DIP echo service on PORT until stdin closes: ``echo_service.py DIP_ID PORT``.

Run inside a server namespace; prints ``ready`` once listening.
"""

import sys

from dip_agent.echo_server import EchoServer


def main() -> None:
    server = EchoServer(int(sys.argv[1]), int(sys.argv[2]))
    server.start()
    print("ready", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
