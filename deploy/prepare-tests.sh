#!/usr/bin/env bash
# What the test tiers need on the host besides the platform itself: the clients some tests run
# as a user would (psql), and a browser for the page tests (Debian's chromium, without its
# recommends: see HOST-NOTES). Idempotent: installs only what is missing.
set -euo pipefail
# shellcheck source=deploy/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# Backups are checked with the `age` a user would decrypt them with (Debian's).
command -v age >/dev/null 2>&1 || missing+=(age)
if ((${#missing[@]})); then
  [[ $(id -u) == 0 ]] || die "the tests need ${missing[*]}: install them (as root: apt-get install ${missing[*]})"
  apt_install "${missing[@]}"
fi
log "test prerequisites ready"
