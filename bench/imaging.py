"""Time clean + thumbnail + PDF on the 1024x1024 sample pages, one thread.

``uv run python -m bench.imaging [iterations]`` prints p50/p95 per step and for the whole job,
the peak Python allocation of one job (tracemalloc) and the process's peak RSS.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

from realtime_worker import imaging, pdf_page
from realtime_worker.jobs import PaperSize

PAGES = Path(__file__).resolve().parents[1] / "fixtures" / "pages"
SAMPLES = ("clean.png", "greyish.png", "coloured.png", "noisy.jpg", "photo_like.png")
STEPS = ("clean", "thumbnail", "pdf", "total")


def one_job(data: bytes, timings: dict[str, list[float]]) -> None:
    start = time.perf_counter()
    page = imaging.clean_line_art(data)
    cleaned = time.perf_counter()
    imaging.make_thumbnail(page.png)
    thumbed = time.perf_counter()
    pdf_page.make_pdf(page.png, paper=PaperSize.A4, title="Benchmark page")
    done = time.perf_counter()
    for step, seconds in zip(STEPS, (cleaned - start, thumbed - cleaned, done - thumbed,
                                     done - start), strict=True):
        timings[step].append(seconds * 1000)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def peak_allocation(job: Callable[[], None]) -> float:
    tracemalloc.start()
    job()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def pin_to_one_core() -> str:
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned"
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(iterations: int) -> None:
    pinned = pin_to_one_core()
    rss_before = peak_rss_mib()
    inputs = [(PAGES / name).read_bytes() for name in SAMPLES]
    one_job(inputs[0], {step: [] for step in STEPS})  # warm-up: imports, font metrics
    timings: dict[str, list[float]] = {step: [] for step in STEPS}
    for index in range(iterations):
        one_job(inputs[index % len(inputs)], timings)
    traced = max(peak_allocation(partial(one_job, data, {s: [] for s in STEPS}))
                 for data in inputs)
    print(f"{iterations} jobs over {len(SAMPLES)} sample pages (1024x1024), one thread, {pinned}")
    print(f"{'step':<10} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for step in STEPS:
        values = timings[step]
        print(f"{step:<10} {percentile(values, 0.5):>8.1f} {percentile(values, 0.95):>8.1f} "
              f"{statistics.fmean(values):>8.1f}")
    rss_after = peak_rss_mib()
    print(f"tracemalloc peak per job: {traced:.1f} MiB (Python objects only; Pillow's C image "
          "buffers are not traced)")
    print(f"peak RSS: {rss_before:.1f} MiB after imports, {rss_after:.1f} MiB after the jobs "
          f"(+{rss_after - rss_before:.1f} MiB working set of one job)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
