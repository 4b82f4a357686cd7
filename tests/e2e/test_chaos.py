"""The chaos soak, short: ≈ 200 jobs through three worker processes while everything fails.

The same code as ``uv run python -m bench.chaos`` (its own embedded Postgres, restarted once; the
devstack as a process; ``kill -9`` of a random worker every few seconds; Realtime drops and cuts;
Gemini 429/503, safety blocks, slow and hanging answers, a key refused for a few seconds; Storage
downloads that drip; large photos), with a fixed seed. Every invariant must hold.
"""

from __future__ import annotations

import pytest

from bench.chaos import ChaosConfig, run_chaos

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    # google-genai subclasses aiohttp.ClientSession for every session it opens.
    pytest.mark.filterwarnings("ignore:Inheritance class Aiohttp:DeprecationWarning"),
]

# The key refused for 5 s pauses each worker it reaches for a 4 s cool-down (doubled when a
# worker meets the refusal again): the suite waits for the pause, not for the default 30 s.
SHORT = ChaosConfig(jobs=200, seed=20261128, insert_seconds=30, budget_seconds=150,
                    key_reject_seconds=5, config_pause_seconds=4, job_timeout_seconds=15)


async def test_short_chaos_run_loses_nothing_and_charges_once() -> None:
    result = await run_chaos(SHORT)
    failed = [f"{c.name}: {c.value} (expected {c.expected})" for c in result.verdict.checks if not c.ok]
    assert not failed, "\n".join(failed) + "\n" + result.text
    print(f"short chaos run: {result.seconds:.0f} s")
