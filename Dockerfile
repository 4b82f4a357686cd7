# realtime-worker image: `realtime-worker run` on $PORT (8080), for Cloud Run (deploy/cloudrun/).
#
# One base image name for every stage, so an offline build needs exactly one local stand-in
# (deploy/container-test.sh). Pinned by tag here; in production pin it by digest as well:
#   FROM python:3.12-slim-bookworm@sha256:<digest>
# uv is installed with pip inside the build stage (pinned) instead of being copied from its
# own image, for the same reason.
#
# Plain Dockerfile syntax, no BuildKit-only `RUN --mount`: `gcloud builds submit --tag` uses
# Docker's classic builder, which rejects `--mount`; buildah, BuildKit and kaniko build it too.
# Layer caching still skips the dependency install when only the source changes.
#
# Nothing below names a Python version: the virtual environment is made with the base image's
# `python3` (UV_PYTHON_DOWNLOADS=0) and used from the same path in the runtime stage, so the
# build stage and the runtime stage always agree.

FROM python:3.12-slim-bookworm AS build

ENV UV_VERSION=0.13.9 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=0 \
    UV_NO_CACHE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python3 -m pip install --no-cache-dir "uv==${UV_VERSION}"

WORKDIR /src

# Dependencies only, from the lock file: their own layer, rebuilt only when these change.
# The workspace's member (devstack/, the local stack) is named by the lock file, so uv needs its
# manifest to read the workspace; its code is a development tool and never enters the image
# (--no-dev: only the dev group depends on it).
COPY pyproject.toml uv.lock ./
COPY devstack/pyproject.toml ./devstack/
RUN uv sync --locked --no-dev --no-install-project --no-editable --python python3

# The project itself, installed into the environment as a wheel (not editable), so the runtime
# stage needs the environment only. The wheel holds the worker package and nothing else.
COPY README.md ./
COPY realtime_worker ./realtime_worker
RUN uv sync --locked --no-dev --no-editable --python python3


FROM python:3.12-slim-bookworm AS runtime

RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin worker

# Root-owned and read-only for the worker user: the running process cannot change its own code.
COPY --from=build /app/.venv /app/.venv

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    LOG_FORMAT=json \
    PORT=8080

WORKDIR /app
USER 10001:10001
EXPOSE 8080
STOPSIGNAL SIGTERM

# Exec form: the worker is PID 1 and gets SIGTERM itself (it stops claiming, gives in-flight
# jobs SHUTDOWN_GRACE_SECONDS, releases the rest and exits 0 inside Cloud Run's 10 s).
ENTRYPOINT ["realtime-worker"]
CMD ["run"]
