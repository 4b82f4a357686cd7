"""Fixtures that start the devstack in-process over real sockets (owned by the devstack work)."""

from __future__ import annotations
