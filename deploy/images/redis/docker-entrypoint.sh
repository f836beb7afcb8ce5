#!/usr/bin/env bash
# Entrypoint of temps/redis:<major>: Debian's redis-server, run as the `redis` user.
# Arguments: `redis-server ARGS...` (or only `--option ...`) start the server; any other
# command is executed as-is (e.g. redis-cli).
#
# Temps contract. The service's volume is mounted at /data; the platform's files arrive owned
# by root with mode 0600 (Docker's archive API), so they are copied before dropping privileges:
#   /etc/temps/tls/{server.crt,server.key,ca.crt}  → /run/temps-tls (owned by redis), at every
#                                 start; the server's --tls-*-file options point there.
#   /etc/temps/redis/redis.conf → /data/temps/redis.conf, the live config (only when missing:
#                                 afterwards CONFIG SET + CONFIG REWRITE keep it current).
#   /etc/temps/redis/users.acl  → /data/temps/users.acl, the ACL file (only when missing:
#                                 afterwards ACL SETUSER + ACL SAVE keep it current).
# Persistence off (neither `appendonly yes` nor a save point in the live config) means nothing
# on disk survives a restart: data files left by an earlier mode are removed before the start.
set -Eeuo pipefail

DATA=/data
CONF_DIR=$DATA/temps
CONF=$CONF_DIR/redis.conf
ACL=$CONF_DIR/users.acl
SEED_DIR=/etc/temps/redis
TLS_SRC=/etc/temps/tls
TLS_DIR=/run/temps-tls

log() { printf '%s [entrypoint] %s\n' "$(date -u +'%Y-%m-%d %H:%M:%S UTC')" "$*" >&2; }

setup_tls() {
  rm -rf "$TLS_DIR"
  [[ -f $TLS_SRC/server.crt && -f $TLS_SRC/server.key && -f $TLS_SRC/ca.crt ]] || return 0
  install -d -m 0700 -o redis -g redis "$TLS_DIR"
  install -m 0644 -o redis -g redis "$TLS_SRC/server.crt" "$TLS_SRC/ca.crt" "$TLS_DIR/"
  install -m 0600 -o redis -g redis "$TLS_SRC/server.key" "$TLS_DIR/server.key"
}

seed() { # FILE: copy the platform's seed of FILE into CONF_DIR unless it is there already
  if [[ ! -s $CONF_DIR/$1 && -f $SEED_DIR/$1 ]]; then
    install -m 0600 -o redis -g redis "$SEED_DIR/$1" "$CONF_DIR/$1"
  fi
}

persistent() {
  grep -Eq '^[[:space:]]*appendonly[[:space:]]+"?yes' "$CONF" ||
    grep -Eq '^[[:space:]]*save[[:space:]]+"?[0-9]' "$CONF"
}

if [[ $# -eq 0 || ${1:0:1} == - ]]; then
  set -- redis-server "$@"
fi
if [[ $1 != redis-server || $(id -u) != 0 ]]; then
  exec "$@"
fi

install -d -o redis -g redis -m 0750 "$DATA"
if [[ $(stat -c %U "$DATA") != redis ]]; then chown -R redis:redis "$DATA"; fi
install -d -o redis -g redis -m 0700 "$CONF_DIR"
setup_tls
seed redis.conf
seed users.acl
for f in "$CONF" "$ACL"; do
  [[ -e $f ]] || install -m 0600 -o redis -g redis /dev/null "$f"
done
if [[ " $* " == *" $CONF "* ]]; then # the server runs on the platform's config
  # Redis 6.0's CONFIG REWRITE drops `save ""`, and a config without a save line gets the
  # default save points: in the platform's config, no save line means no save point.
  if ! grep -Eq '^[[:space:]]*save[[:space:]]' "$CONF"; then echo 'save ""' >>"$CONF"; fi
  if ! persistent; then
    for f in "$DATA"/dump.rdb "$DATA"/appendonly.aof* "$DATA"/appendonlydir "$DATA"/temp-*; do
      [[ -e $f ]] || continue
      log "persistence is off: removing $f"
      rm -rf "$f"
    done
  fi
fi

exec setpriv --reuid=redis --regid=redis --init-groups "$@"
