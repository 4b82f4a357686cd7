"""Lines for the person at the terminal: stdout, flushed at once (logs go to stderr)."""

from __future__ import annotations

import sys


def say(text: str = "") -> None:
    """A line for the person at the terminal (stdout; logs go to stderr)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
