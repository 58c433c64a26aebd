"""The DIP side of mptcp-lb: host setup for port-based steering and the echo test service."""
