"""The chaos verdict's reaps: read from the audit of ``public.jobs`` transitions."""

from __future__ import annotations

import uuid

import pytest

from bench.chaos_checks import Snapshot, Transition, _requeues

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0
JOB = uuid.uuid4()


def snapshot(*transitions: Transition) -> Snapshot:
    return Snapshot({}, {}, set(), [], {}, {JOB: list(transitions)})


def step(old: str | None, new: str, by: str | None, code: str | None, at: float,
         lease_until: float | None = None) -> Transition:
    return Transition(JOB, old, new, by, code, T0 + at, None if lease_until is None else T0 + lease_until)


def test_a_release_after_an_earlier_reap_is_not_a_reap() -> None:
    """The code of the reap stays on the row; the owner's give-back, lease still running, is no reap."""
    _, reaps = _requeues(snapshot(
        step(None, "queued", None, None, 0),
        step("queued", "running", "w1-gen1", None, 1),
        step("running", "queued", None, "lease_expired", 9, lease_until=7),
        step("queued", "running", "w2-gen1", "lease_expired", 10),
        step("running", "queued", None, "lease_expired", 11, lease_until=16),
        step("queued", "running", "w3-gen1", "lease_expired", 12),
        step("running", "succeeded", None, None, 13, lease_until=18)))
    assert [(r.claimed_by, r.at - T0) for r in reaps] == [("w1-gen1", 9.0)]
