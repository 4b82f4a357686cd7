"""The CREMA rule (deploy/cloudrun/crema.yaml) against a real database: the scaler's exact query,
and the instance count KEDA derives from it, ceil(metric / target) within min..max."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from bench.fleet import keda_instances, scaled_object, scaler_query
from tests.helpers import insert_job, make_user

pytestmark = pytest.mark.integration

CLOUDRUN = Path(__file__).resolve().parents[2] / "deploy" / "cloudrun"
# The job duration maxReplicaCount is sized for (crema.yaml's comment, docs/scaling.md).
JOB_SECONDS = 20


def pool_env() -> dict[str, str]:
    pool = yaml.safe_load((CLOUDRUN / "workerpool.yaml").read_text("utf-8"))
    [container] = pool["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


async def scaler_metric(conn: asyncpg.Connection, spec: dict[str, Any]) -> float:
    assert spec["triggers"][0]["type"] == "postgresql"
    value = await conn.fetchval(scaler_query(spec))  # exactly what the scaler runs
    return float(value)


async def add_jobs(conn: asyncpg.Connection, user: uuid.UUID, count: int, **columns: Any) -> None:
    for _ in range(count):
        await insert_job(conn, user, **columns)


def test_the_rule_is_derived_from_the_worker_settings() -> None:
    spec, env = scaled_object(), pool_env()
    per_instance = int(env["MAX_CONCURRENT_JOBS"])
    assert float(spec["triggers"][0]["metadata"]["targetQueryValue"]) == per_instance
    useful = min(int(env["GEMINI_MAX_CONCURRENT"]), float(env["GEMINI_RPM"]) * JOB_SECONDS / 60)
    assert spec["maxReplicaCount"] == math.ceil(useful / per_instance)
    assert spec["minReplicaCount"] == 1  # one instance on Realtime keeps pickup as it is
    assert spec["scaleTargetRef"]["name"].endswith("/workerpools/realtime-worker")


async def test_instances_for_queue_states(conn: asyncpg.Connection) -> None:
    spec = scaled_object()
    user = await make_user(conn, balance=1000)
    counts = []

    async def state() -> tuple[float, int]:
        metric = await scaler_metric(conn, spec)
        return metric, keda_instances(metric, spec)

    counts.append(await state())  # nothing queued
    await add_jobs(conn, user, 3)
    counts.append(await state())  # 3 due
    await add_jobs(conn, user, 50, status="succeeded")
    await add_jobs(conn, user, 4, status="failed")
    await add_jobs(conn, user, 5, run_after=await conn.fetchval("select now() + interval '1 hour'"))
    await add_jobs(conn, user, 3, status="running")
    await add_jobs(conn, user, 6)
    counts.append(await state())  # 9 due + 3 running; finished and not-yet-due ones not counted
    await add_jobs(conn, user, 40)
    counts.append(await state())  # a burst: capped by the Gemini budget
    assert counts == [(0, 1), (3, 1), (12, 3), (52, 5)]
