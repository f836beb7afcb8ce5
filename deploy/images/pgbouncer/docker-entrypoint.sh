#!/bin/sh
# Entrypoint of temps/pgbouncer. Contract:
#   /etc/temps/pgbouncer/pgbouncer.ini   the configuration (any owner/mode), with every file it
#                                         names under /run/temps-pgbouncer
#   /etc/temps/pgbouncer/*               more files it names (userlist.txt, ...)
#   /etc/temps/tls/{server.crt,server.key,ca.crt}
# Everything is copied to /run/temps-pgbouncer (owned by the pgbouncer user, 0600) and
# PgBouncer runs as that user in the foreground. Any other command is executed as-is.
set -eu

RUN_DIR=/run/temps-pgbouncer

if [ "${1:-pgbouncer}" != pgbouncer ]; then exec "$@"; fi

rm -rf "$RUN_DIR"
install -d -m 0700 "$RUN_DIR"
for f in /etc/temps/pgbouncer/* /etc/temps/tls/*; do
  [ -f "$f" ] || continue
  install -m 0600 "$f" "$RUN_DIR/$(basename "$f")"
done
if [ ! -f "$RUN_DIR/pgbouncer.ini" ]; then
  echo "[entrypoint] /etc/temps/pgbouncer/pgbouncer.ini is missing" >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then
  chown -R pgbouncer: "$RUN_DIR"
  exec pgbouncer -u pgbouncer "$RUN_DIR/pgbouncer.ini"
fi
exec pgbouncer "$RUN_DIR/pgbouncer.ini"
