"""``realtime-worker demo`` as a newcomer runs it: nothing configured, embedded Postgres, fake Gemini.

The environment has no ``DATABASE_URL``, ``SUPABASE_*`` or ``GEMINI_*`` and the working
directory has no ``.env``, so the embedded path is what runs. The demo runs twice over the same
data folder (the second run must reuse it); each run must leave real pages that open, print
its summary, and never print a key.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from PIL import Image
from pypdf import PdfReader

from realtime_worker.devstack.keys import InvalidKey, Keys

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]

FOLDERS = ["1-a-tiger-eating-a-burger", "2-a-castle-on-a-hill-with-a-friendly",
           "3-a-smiling-sun-over-the-sea", "4-photo", "5-edit-of-1"]
FILES = {"edge.png", "thumbnail.png", "coloring_page.pdf"}
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")
RUN_BUDGET_SECONDS = 60.0


def newcomer_env() -> dict[str, str]:
    """This environment without anything a newcomer would not have configured."""
    unset = ("DATABASE_URL", "SUPABASE", "NEXT_PUBLIC_SUPABASE", "GEMINI", "LOG_", "PORT")
    return {k: v for k, v in os.environ.items() if not k.startswith(unset)}


async def run_demo(data_dir: Path, output: Path, cwd: Path) -> tuple[int, str, float]:
    command = [sys.executable, "-m", "realtime_worker", "demo", "--data-dir", str(data_dir),
               "--output", str(output)]
    started = time.perf_counter()
    with anyio.fail_after(180):
        done = await anyio.run_process(command, env=newcomer_env(), cwd=cwd, check=False,
                                       stderr=subprocess.STDOUT)
    return done.returncode, done.stdout.decode(), time.perf_counter() - started


def check_page(folder: Path) -> None:
    assert {p.name for p in folder.iterdir()} == FILES
    with Image.open(folder / "edge.png") as edge:
        edge.load()
        colours = {value for _, value in edge.convert("L").getcolors(256) or []}
    assert colours <= {0, 255} and colours, f"{folder}: not pure black and white: {colours}"
    with Image.open(folder / "thumbnail.png") as thumb:
        assert thumb.width <= 400 and thumb.height <= 400
    pdf = PdfReader(io.BytesIO((folder / "coloring_page.pdf").read_bytes()))
    assert len(pdf.pages) == 1


def check_summary(out: str) -> None:
    assert "jobs: 5, succeeded: 5, failed: 0" in out, out
    assert re.search(r"pickup latency \(queued → running\): p50 \d+ ms, max \d+ ms", out), out
    assert re.search(r"pages in .+ \(open .+/1-a-tiger-eating-a-burger/coloring_page.pdf\):", out), out
    assert "everything is stopped" in out, out
    for status in ("queued", "running", "succeeded"):
        assert len(re.findall(rf"#\d \w+ +\".*\" +{status}\b", out)) == 5, (status, out)


def check_no_keys(out: str, data_dir: Path) -> None:
    """No key of the stack: not the secrets in the data folder, not any token they signed."""
    keys = Keys.for_folder(data_dir)
    secrets = [keys.secret, keys.service_role, keys.anon, (data_dir / "gemini_api_key").read_text().strip()]
    for secret in secrets:
        assert secret not in out
    for token in JWT.findall(out):
        with pytest.raises(InvalidKey):
            keys.verify(token)
    assert "AIza" not in out and "apikey" not in out.lower()


@pytest.fixture
def data_home() -> Iterator[Path]:
    """The demo's data folder, outside pytest's temp folder: when tests run as root the embedded
    Postgres runs as another user, and any pytest session starting meanwhile (another run on the
    same machine) resets that folder to owner-only access, so stopping the server would fail."""
    folder = Path(tempfile.mkdtemp(prefix="rw-demo-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_demo_from_nothing_twice(tmp_path: Path, data_home: Path) -> None:
    data_dir = data_home / "ds"
    for run, output in enumerate([tmp_path / "out", tmp_path / "out2"], start=1):
        code, out, seconds = await run_demo(data_dir, output, tmp_path)
        print(f"demo run {run}: {seconds:.1f}s\n{out}")
        assert code == 0, out
        assert sorted(p.name for p in output.iterdir()) == FOLDERS
        for folder in FOLDERS:
            check_page(output / folder)
        check_summary(out)
        check_no_keys(out, data_dir)
        assert "Traceback" not in out and "ERROR" not in out, out
        assert not re.search(r"\d\d:\d\d:\d\d\.\d{3} (INFO|DEBUG)", out), "log level is not WARNING"
        assert seconds < RUN_BUDGET_SECONDS, out
    assert not (data_dir / "pg" / "postmaster.pid").exists()  # the embedded Postgres was stopped
