"""realtime-worker: turns queued coloring-page jobs into printable pages."""

__version__ = "0.1.0"
