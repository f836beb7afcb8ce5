#!/usr/bin/env bash
# Stop and remove the control-plane containers (compose down, WITHOUT -v):
# volumes, $TEMPS_DATA_DIR, the external `temps` network and the managed service
# containers (not part of the compose project) are all kept.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! docker_answers; then log "no Docker daemon answers: nothing to stop"; exit 0; fi
ensure_compose_env
log "compose down (project $(compose_project))"
compose down --timeout 20
log "Temps control plane stopped (data kept in volumes and $TEMPS_DATA_DIR)"
