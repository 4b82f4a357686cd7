"""The virtual-time loop the dispatcher tests run on: time moves only to the next timer."""

from __future__ import annotations

import anyio
import pytest

from realtime_worker.testing import LoopClock, VirtualTimeLoop

pytestmark = pytest.mark.unit


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "asyncio", {"loop_factory": VirtualTimeLoop}


async def test_sleeps_end_in_order_at_their_virtual_times() -> None:
    start, ended = anyio.current_time(), []

    async def sleeper(seconds: float) -> None:
        await anyio.sleep(seconds)
        ended.append((seconds, anyio.current_time() - start))

    async with anyio.create_task_group() as tg:
        for seconds in (3600, 0.5, 60):
            tg.start_soon(sleeper, seconds)
    assert ended == [(0.5, 0.5), (60, 60), (3600, 3600)]


async def test_a_timeout_fires_at_its_virtual_deadline_and_the_loop_clock_follows() -> None:
    clock = LoopClock()
    before = clock.now()
    with anyio.move_on_after(30) as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert (clock.now() - before).total_seconds() == 30
