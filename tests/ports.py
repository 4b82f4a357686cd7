"""Local TCP ports for the tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A 127.0.0.1 port nothing listens on now (also what a "closed port" test needs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
