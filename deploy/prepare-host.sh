#!/usr/bin/env bash
# Prepare this host for Temps (idempotent; quick when nothing changed):
#   - a Docker engine (Debian's docker.io installed if dockerd is missing; dockerd
#     started in the background, log /var/log/temps-dockerd.log, when no daemon answers)
#   - $REPO/.venv with the project installed editable + dev extras
#     (skipped while .venv/.temps-stamp matches the sha256 of pyproject.toml)
#   - the Docker network `temps` (bridge, label io.temps.managed=true)
#   - the base image temps/base:bookworm (see build-images.sh)
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_docker
ensure_venv
ensure_network
"$DEPLOY/build-images.sh" base
log "host ready"
