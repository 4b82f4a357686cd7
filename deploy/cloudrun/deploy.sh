#!/usr/bin/env bash
# Build, deploy, roll back and pause realtime-worker on Cloud Run. Nothing runs without a
# sub-command; every sub-command prints the gcloud command before running it.
#
#   export PROJECT_ID=my-project REGION=europe-west1
#   export SUPABASE_URL=https://<project-ref>.supabase.co      # deploy / render only
#   deploy/cloudrun/deploy.sh build [TAG]          # Cloud Build: builds ./Dockerfile, pushes IMAGE:TAG
#   deploy/cloudrun/deploy.sh deploy [TAG]         # service.yaml -> gcloud run services replace
#   deploy/cloudrun/deploy.sh revisions            # list revisions (for rollback)
#   deploy/cloudrun/deploy.sh rollback REVISION    # all traffic to an earlier revision
#   deploy/cloudrun/deploy.sh latest               # all traffic back to the latest revision
#   deploy/cloudrun/deploy.sh pause | resume       # PAUSE_WORKER=true|false (new revision)
#   deploy/cloudrun/deploy.sh scale-zero           # no instance at all (min 0, nothing calls it)
#   deploy/cloudrun/deploy.sh render service|workerpool|crema [TAG]   # print a rendered manifest
#   deploy/cloudrun/deploy.sh deploy-pool [TAG]    # the worker-pool alternative (workerpool.yaml)
#   deploy/cloudrun/deploy.sh rollback-pool REVISION | pause-pool | resume-pool
#
# Environment: PROJECT_ID and REGION (required), SERVICE (default realtime-worker),
# REPOSITORY (Artifact Registry repository, default realtime-worker), SUPABASE_URL (for the
# manifests). TAG defaults to the current git commit (short). Secrets are never passed here:
# the manifests reference Secret Manager versions (see service.yaml). One-time setup:
#
#   gcloud artifacts repositories create realtime-worker --repository-format=docker --location=REGION
#   gcloud iam service-accounts create realtime-worker
#   printf %s "$KEY" | gcloud secrets create supabase-service-role-key --data-file=-   # or versions add
#   printf %s "$KEY" | gcloud secrets create gemini-api-key --data-file=-
#   gcloud secrets add-iam-policy-binding supabase-service-role-key \
#     --member=serviceAccount:realtime-worker@PROJECT_ID.iam.gserviceaccount.com \
#     --role=roles/secretmanager.secretAccessor        # and the same for gemini-api-key
#   (then set the version numbers in service.yaml / workerpool.yaml `key:` fields)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SERVICE=${SERVICE:-realtime-worker}
REPOSITORY=${REPOSITORY:-realtime-worker}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

need() {
    local name
    for name in "$@"; do
        [[ -n ${!name:-} ]] || { echo "deploy.sh: set $name (see --help)" >&2; exit 2; }
    done
}

run() {
    printf '+ %s\n' "$*" >&2
    "$@"
}

default_tag() { git -C "$ROOT" rev-parse --short HEAD; }

image() {
    need PROJECT_ID REGION
    echo "$REGION-docker.pkg.dev/$PROJECT_ID/$REPOSITORY/realtime-worker:${1:-$(default_tag)}"
}

gc() { run gcloud "$@" --project "$PROJECT_ID" --region "$REGION"; }

render() {
    # render service|workerpool|crema [TAG]: the manifest with its __PLACEHOLDERS__ filled in
    # (crema: the autoscaling of the worker pool, docs/scaling.md).
    local which=${1:?render service|workerpool|crema [TAG]} img out
    need PROJECT_ID REGION SUPABASE_URL
    [[ $which == service || $which == workerpool || $which == crema ]] ||
        { echo "render service|workerpool|crema" >&2; exit 2; }
    img=$(image "${2:-}")
    out=$(sed -e "s|__PROJECT_ID__|$PROJECT_ID|g" -e "s|__REGION__|$REGION|g" \
        -e "s|__IMAGE__|$img|g" -e "s|__SUPABASE_URL__|$SUPABASE_URL|g" \
        -e "s|^  name: realtime-worker$|  name: $SERVICE|" "$HERE/$which.yaml")
    if grep -v '^ *#' <<<"$out" | grep -q '__[A-Z_]*__'; then
        echo "deploy.sh: unfilled placeholder in $which.yaml" >&2
        exit 1
    fi
    echo "$out"
}

replace() {
    # replace service|workerpool [TAG]
    local file
    file=$(mktemp --suffix=.yaml)
    render "$1" "${2:-}" >"$file"
    if [[ $1 == service ]]; then
        gc run services replace "$file"
    else
        gc run worker-pools replace "$file"
    fi
    rm -f "$file"
}

main() {
    local command=${1:-}
    shift || true
    case $command in
        build)
            need PROJECT_ID REGION
            # Cloud Build builds ./Dockerfile (honours .dockerignore; uploads what .gcloudignore or,
            # without one, .gitignore lets through) and pushes the image to Artifact Registry.
            run gcloud builds submit "$ROOT" --project "$PROJECT_ID" --region "$REGION" \
                --tag "$(image "${1:-}")"
            ;;
        deploy) need PROJECT_ID REGION; replace service "${1:-}" ;;
        deploy-pool) need PROJECT_ID REGION; replace workerpool "${1:-}" ;;
        render) render "$@" ;;
        revisions) need PROJECT_ID REGION; gc run revisions list --service "$SERVICE" ;;
        rollback)
            need PROJECT_ID REGION
            # Pins traffic to REVISION until `latest` is run (a later deploy keeps the pin).
            gc run services update-traffic "$SERVICE" --to-revisions "${1:?rollback REVISION}=100"
            ;;
        latest) need PROJECT_ID REGION; gc run services update-traffic "$SERVICE" --to-latest ;;
        pause)
            need PROJECT_ID REGION
            # The worker stays up and healthy but claims nothing; queued jobs wait. The next
            # `deploy` sets PAUSE_WORKER back to what service.yaml says.
            gc run services update "$SERVICE" --update-env-vars PAUSE_WORKER=true
            ;;
        resume) need PROJECT_ID REGION; gc run services update "$SERVICE" --update-env-vars PAUSE_WORKER=false ;;
        scale-zero)
            need PROJECT_ID REGION
            # No warm instance: with internal ingress and no callers, the instance goes away and
            # running jobs are released on SIGTERM. `deploy` restores minScale 1.
            gc run services update "$SERVICE" --min-instances 0
            ;;
        rollback-pool)
            need PROJECT_ID REGION
            # Older gcloud releases have this under `gcloud beta run worker-pools`.
            gc run worker-pools update-instance-split "$SERVICE" --to-revisions "${1:?rollback-pool REVISION}=100"
            ;;
        pause-pool) need PROJECT_ID REGION; gc run worker-pools update "$SERVICE" --instances 0 ;;
        resume-pool) need PROJECT_ID REGION; gc run worker-pools update "$SERVICE" --instances 1 ;;
        -h | --help | help | "") usage ;;
        *) echo "deploy.sh: unknown command '$command'" >&2; usage >&2; exit 2 ;;
    esac
}

main "$@"
