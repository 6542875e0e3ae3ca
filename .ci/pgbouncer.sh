#!/usr/bin/env bash
# PgBouncer for the database tests: installs it from Debian's packages if missing, writes its
# configuration (transaction pooling on 127.0.0.1:6432 in front of the server on
# 127.0.0.1:5432, auth_type trust for user postgres, admin_users postgres) and starts it as a
# non-root user. Idempotent: a PgBouncer this script started and that still runs is left as
# it is. Prints the line to export for the tests.
#
#   eval "$(.ci/pgbouncer.sh)"      # sets POOL_TEST_PGBOUNCER_URL
#   .ci/pgbouncer.sh stop           # stops it
#
# Settings (environment): PGBOUNCER_DIR (config, log, pid; /var/tmp/pool-pgbouncer),
# PGBOUNCER_USER (the user it runs as when started by root; pool-pgbouncer, created if
# missing), PGBOUNCER_PORT (6432), UPSTREAM_HOST / UPSTREAM_PORT (127.0.0.1 / 5432).
set -euo pipefail

DIR="${PGBOUNCER_DIR:-/var/tmp/pool-pgbouncer}"
RUN_AS="${PGBOUNCER_USER:-pool-pgbouncer}"
PORT="${PGBOUNCER_PORT:-6432}"
UPSTREAM_HOST="${UPSTREAM_HOST:-127.0.0.1}"
UPSTREAM_PORT="${UPSTREAM_PORT:-5432}"
PIDFILE="$DIR/pgbouncer.pid"
URL="postgres://postgres@127.0.0.1:$PORT/test"

log() { echo "pgbouncer.sh: $*" >&2; }

running() {
  [[ -s "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

if [[ "${1:-start}" == "stop" ]]; then
  if running; then
    kill "$(cat "$PIDFILE")"
    for _ in $(seq 1 50); do running || break; sleep 0.1; done
    log "stopped"
  else
    log "not running"
  fi
  exit 0
fi

if running; then
  log "already running (pid $(cat "$PIDFILE"))"
  echo "export POOL_TEST_PGBOUNCER_URL=$URL"
  exit 0
fi

PGBOUNCER="$(command -v pgbouncer || true)"
if [[ -z "$PGBOUNCER" && -x /usr/sbin/pgbouncer ]]; then PGBOUNCER=/usr/sbin/pgbouncer; fi
if [[ -z "$PGBOUNCER" ]]; then
  log "installing pgbouncer from Debian's packages"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >&2
  PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
fi

mkdir -p "$DIR"
cat >"$DIR/pgbouncer.ini" <<EOF
[databases]
* = host=$UPSTREAM_HOST port=$UPSTREAM_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir = $DIR
auth_type = trust
auth_file = $DIR/userlist.txt
admin_users = postgres
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
ignore_startup_parameters = extra_float_digits,options
logfile = $DIR/pgbouncer.log
pidfile = $PIDFILE
EOF
# auth_type trust still wants the user listed.
echo '"postgres" ""' >"$DIR/userlist.txt"

args=(-d "$DIR/pgbouncer.ini")
if [[ "$(id -u)" == 0 ]]; then
  if ! id "$RUN_AS" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_AS"
  fi
  chown -R "$RUN_AS" "$DIR"
  args=(-u "$RUN_AS" "${args[@]}")
fi
rm -f "$PIDFILE"
"$PGBOUNCER" "${args[@]}"

for _ in $(seq 1 50); do
  if pg_isready -q -h 127.0.0.1 -p "$PORT" -U postgres -d test 2>/dev/null; then
    log "running on 127.0.0.1:$PORT (pid $(cat "$PIDFILE" 2>/dev/null || echo '?'), log $DIR/pgbouncer.log)"
    echo "export POOL_TEST_PGBOUNCER_URL=$URL"
    exit 0
  fi
  sleep 0.1
done
log "FATAL: PgBouncer did not start; its log:"
tail -n 20 "$DIR/pgbouncer.log" >&2 || true
exit 1
