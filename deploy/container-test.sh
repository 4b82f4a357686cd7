#!/usr/bin/env bash
# Builds the image from ./Dockerfile without a Docker engine or an image registry, starts it
# against the devstack on the host and proves the container contract Cloud Run relies on:
#
#   1. a stand-in for the Dockerfile's base image, made with debootstrap (Debian's Python 3.11:
#      it proves the Dockerfile's steps, entry point, user, port and signal handling, not the
#      exact Python build of the official image; see shared/reference/offline-container-check.md)
#   2. `buildah bud --pull-never` of the real Dockerfile
#   3. the devstack on the host, the container on the host network with the devstack's env
#   4. /health answers 200, a job inserted on the host is done by the container, the container's
#      log lines are JSON with `severity` and carry no key
#   5. with a second job in flight (the fake Gemini slowed down), `podman stop -t 10` → the job
#      is released back to the queue and the container exits 0 in less than 10 s
#
# Usage: deploy/container-test.sh            (as root, on Debian bookworm)
# Environment:
#   CONTAINER_ARGS   arguments after the image's ENTRYPOINT (default: run), e.g.
#                    "run --processor realtime_worker.testing:scripted"
#   RW_CONTAINER_CACHE  where the stand-in base rootfs is cached (default /var/tmp/rw-container-cache)
#   JOB_TIMEOUT      seconds the job may take (default 120)
#   SHUTDOWN_GRACE   SHUTDOWN_GRACE_SECONDS of the container (default 6)
# Exit codes: 0 passed, 1 failed, 77 skipped (tools cannot be installed or run here) — a skip is
# never a pass.
set -euo pipefail

readonly SKIP=77
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly ROOT
readonly IMAGE=localhost/realtime-worker:test
readonly CACHE_DIR=${RW_CONTAINER_CACHE:-/var/tmp/rw-container-cache}
readonly CONTAINER_ARGS=${CONTAINER_ARGS:-run}
readonly JOB_TIMEOUT=${JOB_TIMEOUT:-120}
readonly STOP_LIMIT_SECONDS=10
# The worker's grace for in-flight jobs in this test. Production uses 8 s (the image default, Cloud
# Run counts its 10 s from SIGTERM); podman adds 0.5-1.5 s of its own to `podman stop` here, so
# 8 s would leave the 10 s check about one second of slack.
readonly SHUTDOWN_GRACE=${SHUTDOWN_GRACE:-6}
# Bump when the stand-in recipe below changes, so a cached base image is rebuilt.
readonly STANDIN_RECIPE=1
readonly TOOLS=(debootstrap buildah podman runc fuse-overlayfs slirp4netns newuidmap)
readonly PACKAGES=(debootstrap buildah podman runc fuse-overlayfs slirp4netns uidmap)

CONTAINER=rw-container-test-$$
UV=(uv)
WORK=""
DEVSTACK_PID=""

# Time in microseconds (bash 5's EPOCHREALTIME), and seconds since a mark with one decimal.
now_us() { echo "${EPOCHREALTIME/./}"; }
since() { local us=$(($(now_us) - $1)); printf '%d.%0*d' $((us / 1000000)) "${2:-1}" $(((us % 1000000) / 10 ** (6 - ${2:-1}))); }
T0=$(now_us)

log() { printf '[container-test %7ss] %s\n' "$(since "$T0")" "$*"; }
skip() { echo "SKIPPED: $*"; exit "$SKIP"; }
fail() {
    echo "FAIL: $*"
    if [[ -n ${CONTAINER_STARTED:-} ]]; then
        echo "--- last container log lines ---"
        podman logs --tail 40 "$CONTAINER" 2>&1 | cut -c1-400 || true
    fi
    if [[ -n $WORK && -f $WORK/devstack.log ]]; then
        echo "--- last devstack log lines ---"
        # Without the announced variables: even throwaway keys stay out of CI logs.
        grep -v -E '^export |KEY=|DATABASE_URL=' "$WORK/devstack.log" | tail -n 20 | cut -c1-400 || true
    fi
    exit 1
}
pass() { echo "PASS: $*"; }

cleanup() {
    local rc=$?
    if [[ -n ${CONTAINER_STARTED:-} ]]; then
        podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1 || true
    fi
    if [[ -n $DEVSTACK_PID ]] && kill -0 "$DEVSTACK_PID" 2>/dev/null; then
        kill -TERM "$DEVSTACK_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$DEVSTACK_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$DEVSTACK_PID" 2>/dev/null || true
    fi
    if [[ -n $WORK ]]; then
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# --- 1. tools --------------------------------------------------------------------------------

missing_tools() {
    local tool missing=()
    for tool in "${TOOLS[@]}" curl; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    echo "${missing[*]}"
}

ensure_tools() {
    [[ $(id -u) -eq 0 ]] || skip "needs root (debootstrap, buildah and podman run rootful here)"
    if ! command -v uv >/dev/null 2>&1; then
        python3 -m uv --version >/dev/null 2>&1 || skip "uv is not installed"
        UV=(python3 -m uv)
    fi
    [[ -z $(missing_tools) ]] && return 0
    command -v apt-get >/dev/null 2>&1 || skip "missing $(missing_tools) and no apt-get to install them"
    echo "installing ${PACKAGES[*]} curl with apt-get"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${PACKAGES[@]}" curl; } >/tmp/rw-container-test-apt.log 2>&1; then
        tail -n 5 /tmp/rw-container-test-apt.log
        skip "apt-get could not install ${PACKAGES[*]} (log: /tmp/rw-container-test-apt.log)"
    fi
    [[ -z $(missing_tools) ]] || skip "still missing after apt-get: $(missing_tools)"
}

write_containers_conf() {
    # crun refuses this kind of host's hybrid cgroups and podman's default 1048576 ulimits
    # cannot be raised here; no systemd, so cgroupfs and file events.
    cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
    export CONTAINERS_CONF=$WORK/containers.conf
}

# --- 2. the stand-in base image --------------------------------------------------------------

base_image_name() {
    # Sets BASE_IMAGE; stages named with `FROM <stage>` do not occur in our Dockerfile.
    local names
    names=$(awk 'toupper($1) == "FROM" { for (i = 2; i <= NF; i++) if ($i !~ /^--/) { print $i; break } }' \
        "$ROOT/Dockerfile" | sort -u)
    [[ -n $names && $(wc -l <<<"$names") -eq 1 ]] ||
        fail "the Dockerfile must use one base image name, found: ${names:-none}"
    BASE_IMAGE=$names
}

qualified() {
    # python:3.12-slim-bookworm -> docker.io/library/python:3.12-slim-bookworm
    local name=$1 first=${1%%/*}
    if [[ $name != */* ]]; then
        echo "docker.io/library/$name"
    elif [[ $first != *.* && $first != *:* && $first != localhost ]]; then
        echo "docker.io/$name"
    else
        echo "$name"
    fi
}

standin_key() {
    # The recipe version plus the host's extra CA certificates (baked into the stand-in).
    { echo "recipe $STANDIN_RECIPE"; cat /usr/local/share/ca-certificates/*.crt 2>/dev/null || true; } |
        sha256sum | cut -c1-16
}

debian_mirror() {
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

make_rootfs_tarball() {
    local tarball=$1 rootfs=$CACHE_DIR/rootfs.tmp mirror
    mirror=$(debian_mirror)
    rm -rf "$rootfs"
    mkdir -p "$rootfs"
    log "debootstrap bookworm from $mirror (about a minute)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
            bookworm "$rootfs" "$mirror" >"$CACHE_DIR/debootstrap.log" 2>&1; then
        tail -n 5 "$CACHE_DIR/debootstrap.log"
        rm -rf "$rootfs"
        skip "debootstrap could not fetch bookworm from $mirror (log: $CACHE_DIR/debootstrap.log)"
    fi
    # Behave like the official python image: pip may install system-wide, python/pip on PATH.
    rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python3"
    ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
    ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/pip"
    # Package downloads go through TLS that only the host's extra CAs trust.
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    fi
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$tarball.part" .
    mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
}

ensure_base_image() {
    local name=$1 key tarball current
    key=$(standin_key)
    if podman image exists "$name"; then
        current=$(podman image inspect --format '{{index .Labels "rw.standin.key"}}' "$name" 2>/dev/null || true)
        if [[ $current == "$key" ]]; then
            log "stand-in base image $name: cached"
            return 0
        fi
        if [[ -z $current ]]; then
            log "$name exists and is not our stand-in: using it as it is"
            return 0
        fi
        podman rmi -f "$name" >/dev/null
    fi
    mkdir -p "$CACHE_DIR"
    tarball=$CACHE_DIR/standin-bookworm-$key.tar
    [[ -f $tarball ]] || make_rootfs_tarball "$tarball"
    log "importing the stand-in as $name"
    podman import \
        --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change "LABEL rw.standin.key=$key" \
        --change 'CMD ["python3"]' \
        "$tarball" "$name" >/dev/null
}

# --- 3. build --------------------------------------------------------------------------------

build_image() {
    log "buildah bud $IMAGE"
    if ! buildah bud --pull-never --isolation chroot --layers -t "$IMAGE" -f "$ROOT/Dockerfile" "$ROOT" \
            >"$WORK/build.log" 2>&1; then
        tail -n 30 "$WORK/build.log"
        fail "buildah bud failed"
    fi
    pass "image built from the Dockerfile ($(podman image inspect --format '{{.Size}}' "$IMAGE" |
        awk '{ printf "%.0f MB", $1 / 1e6 }'))"
}

check_image_config() {
    local user stopsignal
    user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
    stopsignal=$(podman image inspect --format '{{.Config.StopSignal}}' "$IMAGE")
    [[ $user =~ ^[1-9][0-9]*(:[0-9]+)?$ ]] || fail "image user is '$user', expected a non-root numeric uid"
    [[ $stopsignal == SIGTERM ]] || fail "image STOPSIGNAL is '$stopsignal', expected SIGTERM"
    pass "image runs as user $user with STOPSIGNAL $stopsignal"
}

# The image carries the worker only: the local stack (devstack/, a member of the workspace) is
# absent, and asking for one of its commands says so instead of failing with a traceback.
check_image_holds_the_worker_only() {
    local out code=0
    out=$(podman run --rm "$IMAGE" demo 2>&1) || code=$?
    [[ $code -eq 2 && $out == *"is a development command"* ]] ||
        fail "'realtime-worker demo' in the image exited $code: $out"
    podman run --rm --entrypoint python "$IMAGE" -c \
        'import importlib.util, sys; sys.exit(importlib.util.find_spec("realtime_worker_devstack") is not None)' ||
        fail "the image holds the devstack package"
    pass "image holds no devstack; 'demo' there says it is a development command"
}

# --- 4. devstack + container -----------------------------------------------------------------

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

env_value() { awk -F= -v key="$1" '$1 == key { sub(/^[^=]*=/, ""); print; exit }' "$WORK/devstack.env"; }

start_devstack() {
    local port
    port=$(free_port)
    log "starting the devstack on 127.0.0.1:$port (embedded Postgres)"
    # From an empty directory, so a developer's .env (maybe with real keys) is never read.
    (cd "$WORK" && exec env -u DATABASE_URL "${UV[@]}" run --project "$ROOT" --frozen --quiet realtime-worker \
        devstack --data-dir "$WORK/devstack" --port "$port" --env-file "$WORK/devstack.env") \
        >"$WORK/devstack.log" 2>&1 &
    DEVSTACK_PID=$!
    for _ in $(seq 1 600); do
        [[ -s $WORK/devstack.env ]] && break
        kill -0 "$DEVSTACK_PID" 2>/dev/null || fail "the devstack exited before it was ready"
        sleep 0.2
    done
    [[ -s $WORK/devstack.env ]] || fail "the devstack was not ready within 120 s"
    pass "devstack ready at $(env_value SUPABASE_URL)"
}

start_container() {
    local args
    read -r -a args <<<"$CONTAINER_ARGS"
    WORKER_PORT=$(free_port)
    # Values go through the environment (-e NAME), never on a command line.
    SUPABASE_URL=$(env_value SUPABASE_URL) SUPABASE_SERVICE_ROLE_KEY=$(env_value SUPABASE_SERVICE_ROLE_KEY) \
    GEMINI_BASE_URL=$(env_value GEMINI_BASE_URL) GEMINI_API_KEY=$(env_value GEMINI_API_KEY) \
        podman run -d --name "$CONTAINER" --network host \
        -e SUPABASE_URL -e SUPABASE_SERVICE_ROLE_KEY -e GEMINI_BASE_URL -e GEMINI_API_KEY \
        -e PORT="$WORKER_PORT" -e WORKER_ID=container-test -e SHUTDOWN_GRACE_SECONDS="$SHUTDOWN_GRACE" \
        "$IMAGE" "${args[@]}" >/dev/null || fail "podman run failed"
    CONTAINER_STARTED=1
    log "container $CONTAINER started: realtime-worker ${args[*]} (health on port $WORKER_PORT)"
}

wait_healthy() {
    local started code
    started=$(now_us)
    for _ in $(seq 1 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$WORKER_PORT/health" || true)
        [[ $code == 200 ]] && break
        [[ $(podman inspect --format '{{.State.Running}}' "$CONTAINER") == true ]] ||
            fail "the container exited before /health answered"
        sleep 0.2
    done
    [[ $code == 200 ]] || fail "/health did not answer 200 within 60 s (last: $code)"
    pass "/health answered 200 after $(since "$started") s"
}

run_job() {
    local started out
    started=$(now_us)
    log "submitting a job on the host"
    if ! out=$(cd "$WORK" && DATABASE_URL=$(env_value DATABASE_URL) "${UV[@]}" run --project "$ROOT" --frozen --quiet \
            realtime-worker submit "a container test page" --wait --timeout "$JOB_TIMEOUT" 2>&1); then
        echo "$out"
        fail "the job was not done by the container"
    fi
    echo "$out"
    pass "job done by the container in $(since "$started") s"
}

check_logs() {
    podman logs "$CONTAINER" >"$WORK/container.log" 2>&1
    env_value SUPABASE_SERVICE_ROLE_KEY >"$WORK/secrets"
    env_value GEMINI_API_KEY >>"$WORK/secrets"
    python3 - "$WORK/container.log" "$WORK/secrets" <<'EOF' || fail "container logs are not clean JSON lines"
import json, sys
lines = [line for line in open(sys.argv[1], encoding="utf-8").read().splitlines() if line.strip()]
secrets = [s for s in open(sys.argv[2], encoding="utf-8").read().split() if s]
events = []
for line in lines:
    try:
        record = json.loads(line)
    except ValueError:
        sys.exit(f"not JSON: {line[:200]}")
    if "severity" not in record:
        sys.exit(f"no severity: {line[:200]}")
    events.append(record.get("event"))
if any(s in line for s in secrets for line in lines):
    sys.exit("a key appears in the container's logs")
for needed in ("health_listening", "job_started", "job_succeeded"):
    if needed not in events:
        sys.exit(f"no {needed} event in the container's logs")
print(f"{len(lines)} JSON log lines, all with severity, no key")
EOF
    pass "container logs: JSON lines with severity, job_succeeded logged, no key"
}

start_slow_job() {
    # Make the fake Gemini answer after 60 s, submit a job and wait until the container runs it,
    # so SIGTERM arrives with a job in flight (the case Cloud Run's 10 s must cover).
    local out code in_flight=""
    printf 'apikey: %s\n' "$(env_value SUPABASE_SERVICE_ROLE_KEY)" >"$WORK/admin.header"
    code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H @"$WORK/admin.header" \
        -H 'Content-Type: application/json' -d '{"gemini_latency_seconds": 60}' \
        "$(env_value SUPABASE_URL)/admin/faults")
    [[ $code == 200 ]] || fail "could not slow the fake Gemini down (HTTP $code)"
    out=$(cd "$WORK" && DATABASE_URL=$(env_value DATABASE_URL) "${UV[@]}" run --project "$ROOT" --frozen \
        --quiet realtime-worker submit "a page interrupted by SIGTERM" 2>&1) || fail "submit failed: $out"
    SLOW_JOB=$(awk '/^job / { print $2; exit }' <<<"$out")
    for _ in $(seq 1 150); do
        in_flight=$(curl -s "http://127.0.0.1:$WORKER_PORT/metrics" | awk '$1 == "worker_jobs_in_flight" { print $2 }')
        [[ $in_flight == 1.0 ]] && break
        sleep 0.2
    done
    [[ $in_flight == 1.0 ]] || fail "job $SLOW_JOB did not start within 30 s"
    pass "job $SLOW_JOB is running in the container (Gemini answers in 60 s)"
}

shutdown_seconds() {
    # From the worker's signal_received line to its worker_stopped line.
    python3 - "$WORK/container.log" <<'EOF' || echo "?"
import json, sys
from datetime import datetime
times = {}
for line in open(sys.argv[1], encoding="utf-8"):
    record = json.loads(line)
    times.setdefault(record.get("event"), datetime.fromisoformat(record["time"]))
print(f"{(times['worker_stopped'] - times['signal_received']).total_seconds():.2f}")
EOF
}

stop_container() {
    local started us code
    started=$(now_us)
    podman stop -t "$STOP_LIMIT_SECONDS" "$CONTAINER" >/dev/null
    us=$(($(now_us) - started))
    code=$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")
    STOP_S=$(since "$started" 2)
    podman logs "$CONTAINER" >"$WORK/container.log" 2>&1
    [[ $code == 0 ]] || fail "exit code after SIGTERM is $code, expected 0 (after $STOP_S s)"
    ((us < STOP_LIMIT_SECONDS * 1000000)) || fail "podman stop took $STOP_S s, limit $STOP_LIMIT_SECONDS s"
    grep -q '"worker_stopped"' "$WORK/container.log" || fail "no worker_stopped event after SIGTERM"
    awk -v id="$SLOW_JOB" 'index($0, "\"job_released\"") && index($0, id) { found = 1 } END { exit !found }' \
        "$WORK/container.log" ||
        fail "the in-flight job $SLOW_JOB was not released back to the queue"
    pass "SIGTERM with a job in flight: job released, exit code 0 after $STOP_S s (limit $STOP_LIMIT_SECONDS s," \
        "grace $SHUTDOWN_GRACE s, worker's own shutdown $(shutdown_seconds) s)"
}

main() {
    ensure_tools
    WORK=$(mktemp -d /tmp/rw-container-test.XXXXXX)
    write_containers_conf
    local t standin_s build_s devstack_s run_s
    base_image_name
    t=$(now_us); ensure_base_image "$(qualified "$BASE_IMAGE")"; standin_s=$(since "$t")
    t=$(now_us); build_image; build_s=$(since "$t")
    check_image_config
    check_image_holds_the_worker_only
    t=$(now_us); start_devstack; devstack_s=$(since "$t")
    t=$(now_us); start_container; wait_healthy; run_job; run_s=$(since "$t")
    check_logs
    start_slow_job
    stop_container
    echo "timings: stand-in base ${standin_s} s, build ${build_s} s, devstack ${devstack_s} s," \
        "container start + job ${run_s} s, stop ${STOP_S} s, total $(since "$T0") s"
    echo "PASS: container test"
}

main "$@"
