"""The workspace split: the worker's wheel carries the worker; the local stack is a member package.

The wheel is really built (``uv build``), and the production environment is really made the way
the Dockerfile makes it (offline, from uv's cache, which ``uv sync`` has filled).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY = ("devstack", "dev.py", "demo.py", "fixtures", "_fixtures")


def uv() -> str:
    """uv itself: ``uv run`` names it in ``UV``; otherwise the one on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    assert found, "uv is needed to build the wheel (the README installs it: pip install uv)"
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([uv(), "build", "--wheel", "--package", "realtime-worker", "-o", str(out)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    (built,) = out.glob("realtime_worker-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The environment the production image builds (the Dockerfile's own ``uv sync`` line):
    the worker from the lock file, as a wheel, without the development group."""
    venv = tmp_path_factory.mktemp("prod") / "venv"
    subprocess.run([uv(), "sync", "--locked", "--no-dev", "--no-editable", "--offline", "--quiet"],
                   cwd=REPO, env={**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)},
                   check=True, capture_output=True, timeout=300)
    return venv


def test_the_wheel_holds_no_file_of_the_local_stack(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
    print("\n".join(names))
    assert "realtime_worker/worker.py" in names
    assert "realtime_worker/sql/migrations/broadcast/0020_broadcast_wakeup.sql" in names  # on request
    assert not [n for n in names if any(part in n.split("/") for part in DEV_ONLY)]
    assert not [r for r in requires if "pyjwt" in r.lower() or "pgserver" in r.lower()], requires


def test_importing_the_cli_and_check_loads_no_devstack_module() -> None:
    code = ("import sys, realtime_worker.cli, realtime_worker.check\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('realtime_worker_devstack', 'pgserver')))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         timeout=60).stdout
    assert out.strip() == "[]", out


def test_the_installed_worker_runs_and_says_the_dev_commands_are_absent(installed: Path) -> None:
    cli = str(installed / "bin" / "realtime-worker")
    help_text = subprocess.run([cli, "run", "--help"], check=True, capture_output=True, text=True,
                               timeout=60).stdout
    assert "--poll-only" in help_text
    for command in ("demo", "dev", "devstack"):
        done = subprocess.run([cli, command], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done
        assert f"`{command}` is a development command" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
