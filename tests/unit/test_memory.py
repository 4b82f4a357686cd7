"""``memory.release`` finds glibc's ``malloc_trim`` where there is one."""

from __future__ import annotations

import platform

import pytest

from realtime_worker import memory

pytestmark = pytest.mark.unit


def test_malloc_trim_is_found_on_glibc() -> None:
    on_glibc = platform.libc_ver()[0] == "glibc"
    assert (memory._TRIM is not None) is on_glibc

