"""The benches that came with the devstack, the pipeline and the foundation, run as they are.

Each runs as its own subprocess (``python -m bench.<name> N``) against the run's Postgres
(``DATABASE_URL`` set to it; each makes and drops its own scratch database), so a bench that
pins itself to one core (imaging) pins only itself. Their printed output goes into the report
verbatim, and the figures their issues set targets for are read from it.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from bench import harness
from bench.context import Context
from bench.report import Results

Check = Callable[[str, Results], None]


def figures(pattern: str, text: str) -> list[float] | None:
    found = re.search(pattern, text, re.MULTILINE)
    return [float(value) for value in found.groups()] if found else None


def check_imaging(out: str, results: Results) -> None:
    total = figures(r"^total\s+([\d.]+)\s+([\d.]+)", out)
    results.target(5, "clean + thumbnail + PDF, 1024×1024, one core, p50", "≤ 150 ms",
                   f"{total[0]:.1f} ms" if total else "unreadable", total[0] <= 150 if total else None)


def check_rpc(out: str, results: Results) -> None:
    """Judged on the client as anyone creates it; the worker's own transport is shown beside."""
    p50s = [float(v) for v in re.findall(r"p50\s+([\d.]+) ms", out)]
    measured = "unreadable"
    if p50s:
        measured = f"{p50s[0]:.2f} ms (httpx's default transport)"
        if len(p50s) > 1:
            measured += f"; {p50s[1]:.2f} ms on the worker's aiohttp transport"
    results.target(3, "RPC round trip through the devstack, p50", "≤ 2 ms", measured,
                   p50s[0] <= 2 if p50s else None)


def check_realtime(out: str, results: Results) -> None:
    hop = figures(r"INSERT returned → realtime-py callback \(ms\): "
                  r"p50 ([\d.]+)\s+p95 ([\d.]+)\s+p99 ([\d.]+)", out)
    measured = f"p50 {hop[0]:.2f} ms, p99 {hop[2]:.2f} ms" if hop else "unreadable"
    results.target(3, "INSERT commit → realtime-py callback", "p50 ≤ 2 ms and p99 ≤ 5 ms", measured,
                   hop[0] <= 2 and hop[2] <= 5 if hop else None)


def check_pipeline(out: str, results: Results) -> None:
    overhead = figures(r"^overhead outside generation\s+([\d.]+)\s+([\d.]+)", out)
    results.target(5, "per-job overhead outside generation (claim, 3 uploads, complete), p50", "≤ 20 ms",
                   f"{overhead[0]:.1f} ms" if overhead else "unreadable",
                   overhead[0] <= 20 if overhead else None)


def check_claims(out: str, results: Results) -> None:
    worst = figures(r"worst p50 ratio ([\d.]+)x", out)
    rows = re.findall(r"^(worker_claim_jobs?\S*(?: \S+)?)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)", out,
                      re.MULTILINE)
    detail = "; ".join(f"{name} {small} → {large} ms" for name, small, large in rows)
    results.target(2, "claim p50 with 1M vs 1k finished jobs", "within 2×",
                   f"{worst[0]:.2f}× worst ({detail})" if worst else "unreadable",
                   worst[0] <= 2 if worst else None)


def check_photo_decode(out: str, results: Results) -> None:
    worst = figures(r"^worst ([\d.]+) MiB", out)
    results.target(14, "RSS one 24 MP photo adds while prepared (JPEG, PNG, RGBA PNG, HEIC)",
                   "≤ 150 MB", f"{worst[0] * 2**20 / 1e6:.0f} MB worst" if worst else "unreadable",
                   worst[0] * 2**20 <= 150e6 if worst else None)


@dataclass(frozen=True)
class Existing:
    module: str
    title: str
    full: int
    quick: int
    check: Check

    async def run(self, ctx: Context) -> None:
        count = ctx.size(self.full, self.quick)
        out = await run_module(self.module, count, ctx.admin_dsn)
        section = ctx.results.section(self.title)
        section.text(f"`python -m bench.{self.module} {count}` (unchanged bench, output verbatim):")
        section.block(out)
        self.check(out, ctx.results)


async def run_module(module: str, count: int, admin_dsn: str) -> str:
    env = {**harness.base_env(), "DATABASE_URL": admin_dsn, "PYTHONUNBUFFERED": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"bench.{module}", str(count), env=env, cwd=os.getcwd(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=900)
    text = out.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"bench.{module} exited with {process.returncode}: {text[-800:]}")
    return text


BENCHES = {bench.module: bench for bench in (
    Existing("claim_scale", "Claim at scale: 1k vs 1M finished jobs", 300, 100, check_claims),
    Existing("realtime_latency", "Devstack Realtime hop: INSERT commit → realtime-py callback", 300, 100,
             check_realtime),
    Existing("devstack_rpc", "Devstack RPC round trip (supabase-py → PostgREST-style → Postgres)", 500, 200,
             check_rpc),
    Existing("pipeline", "Pipeline: per-job overhead outside generation, step by step", 50, 15,
             check_pipeline),
    Existing("imaging", "Imaging: clean + thumbnail + PDF of a 1024×1024 page, one core", 100, 30,
             check_imaging),
    Existing("photo_decode", "Photos: RSS one 24 MP photo adds while prepared for Gemini", 1, 1,
             check_photo_decode),
)}
