#!/bin/sh
# Shows pgsluice working: a throwaway PostgreSQL 15 behind pgsluice, driven by pgbench.
#
# Usage: sh contrib/demo.sh start    (what `make demo` runs)
#        sh contrib/demo.sh stop     (what `make demo-stop` runs)
#
# Everything lives in .demo/ at the top of the repository: the database cluster, its
# Unix socket, pgsluice.ini, userlist.txt and the logs. `stop` removes it all.
#
# Environment:
#   PGSLUICE_BIN   the pooler to run (default ./pgsluice). Debian's PgBouncer reads the
#                  same files: PGSLUICE_BIN=/usr/sbin/pgbouncer sh contrib/demo.sh start
#   PGBIN          PostgreSQL's programs (default /usr/lib/postgresql/15/bin)
#   DEMO_TIME      seconds of the pgbench run (default 5)
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEMO="$ROOT/.demo"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
BIN=${PGSLUICE_BIN:-$ROOT/pgsluice}
DEMO_TIME=${DEMO_TIME:-5}

say() { echo "demo: $*"; }
die() { echo "demo: $*" >&2; exit 1; }

# as_pg, is_pgbouncer, free_port, port_in_use, kill_pidfile, start_cluster, ...
. "$ROOT/contrib/pgcluster.sh"

# Runs the pooler: as the postgres user when it is PgBouncer and we are root.
as_pooler() {
  if is_pgbouncer "$BIN"; then as_pg "$@"; else "$@"; fi
}

# The directory holding the cluster and the pooler's files: .demo itself, or a
# directory under /tmp when the postgres user cannot reach .demo (a repository in
# /root, for instance); .demo/rundir then names it.
rundir() {
  if [ -f "$DEMO/rundir" ]; then cat "$DEMO/rundir"; else echo "$DEMO"; fi
}

do_stop() {
  [ -d "$DEMO" ] || { say "nothing to stop (no .demo/)"; return 0; }
  RUN=$(rundir)
  kill_pidfile "$RUN/pgsluice.pid" pgsluice.ini
  kill_pidfile "$RUN/pooler.pid" pgsluice.ini
  stop_cluster "$RUN/pgdata" fast postgres
  [ "$RUN" != "$DEMO" ] && rm -rf "$RUN"
  rm -rf "$DEMO"
  say "stopped; .demo/ removed"
}

do_start() {
  if [ -d "$DEMO" ]; then
    RUN=$(rundir)
    if [ -f "$RUN/pgdata/postmaster.pid" ] || [ -f "$RUN/pgsluice.pid" ]; then
      die ".demo/ exists and may be running: run 'make demo-stop' first"
    fi
    rm -rf "$DEMO"
  fi
  need_pg_programs
  [ -x "$BIN" ] || die "$BIN not found or not executable (run 'make pgsluice', or set PGSLUICE_BIN)"
  need_postgres_user

  # From here on, a failure or an interruption undoes everything.
  started=0
  trap 'if [ $started -eq 0 ]; then echo "demo: start failed, cleaning up" >&2; do_stop >/dev/null 2>&1; fi' EXIT
  trap 'exit 1' INT TERM HUP

  mkdir -p "$DEMO"
  RUN=$DEMO
  if is_root; then
    chown postgres: "$DEMO"
    if ! runuser -u postgres -- test -w "$DEMO"; then
      RUN=$(mktemp -d /tmp/pgsluice-demo.XXXXXX)
      chown postgres: "$RUN"
      echo "$RUN" >"$DEMO/rundir"
      say "the postgres user cannot reach $DEMO: using $RUN"
    fi
  fi

  PGPORT=$(free_port 15432)
  POOLPORT=$(free_port 16432 "$PGPORT")

  say "creating a PostgreSQL 15 cluster in $RUN/pgdata (port $PGPORT)"
  start_cluster "$RUN" "$PGPORT" "\
# pgsluice demo: loopback and a private socket only; durability is not needed.
max_connections = 50
fsync = off
synchronous_commit = off
full_page_writes = off
password_encryption = 'scram-sha-256'"

  create_owner_db "$RUN" "$PGPORT" demo
  say "user demo (password demo, SCRAM) and database demo created"

  # The pooler checks the client's SCRAM proof against this password and uses it to
  # log in to PostgreSQL with SCRAM in turn.
  (umask 077 && printf '"demo" "demo"\n' >"$RUN/userlist.txt")
  cat >"$RUN/pgsluice.ini" <<EOF
;; pgsluice demo configuration, written by contrib/demo.sh
[databases]
demo = host=127.0.0.1 port=$PGPORT dbname=demo

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $POOLPORT
unix_socket_dir = $RUN
auth_type = scram-sha-256
auth_file = $RUN/userlist.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 100
admin_users = demo
logfile = $RUN/pgsluice.log
pidfile = $RUN/pgsluice.pid
EOF
  # PgBouncer standing in would warn about a key it does not know.
  is_pgbouncer "$BIN" || printf 'workers = 2\n' >>"$RUN/pgsluice.ini"
  is_root && chown -R postgres: "$RUN"

  say "starting $BIN on 127.0.0.1:$POOLPORT"
  if ! as_pooler "$BIN" -d "$RUN/pgsluice.ini" >>"$RUN/pooler.out" 2>&1; then
    cat "$RUN/pooler.out" >&2
    [ -f "$RUN/pgsluice.log" ] && tail -n 20 "$RUN/pgsluice.log" >&2
    die "the pooler did not start"
  fi
  i=0
  until port_in_use "$POOLPORT" && [ -s "$RUN/pgsluice.pid" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
      [ -f "$RUN/pgsluice.log" ] && tail -n 20 "$RUN/pgsluice.log" >&2
      die "the pooler is not listening on port $POOLPORT after 10 s"
    fi
    sleep 0.1
  done

  export PGPASSWORD=demo
  say "pgbench -i -s 1 through the pooler"
  "$PGBIN/pgbench" -h 127.0.0.1 -p "$POOLPORT" -U demo -i -s 1 -q demo >"$RUN/pgbench-init.log" 2>&1 ||
    { cat "$RUN/pgbench-init.log" >&2; die "pgbench -i failed"; }
  say "pgbench -c 8 -j 2 -T $DEMO_TIME -M simple through the pooler"
  echo
  "$PGBIN/pgbench" -h 127.0.0.1 -p "$POOLPORT" -U demo -c 8 -j 2 -T "$DEMO_TIME" -M simple demo \
    2>"$RUN/pgbench.err" || { cat "$RUN/pgbench.err" >&2; die "pgbench failed"; }
  echo

  started=1
  say "running: PostgreSQL on 127.0.0.1:$PGPORT, pooler on 127.0.0.1:$POOLPORT (pid $(cat "$RUN/pgsluice.pid"))"
  say "files in $RUN (pgsluice.ini, userlist.txt, pgsluice.log, postgres.log)"
  echo
  echo "Connect through pgsluice:"
  echo "  PGPASSWORD=demo psql -h 127.0.0.1 -p $POOLPORT -U demo demo"
  echo "Stop and remove everything:"
  echo "  make demo-stop"
}

case "${1:-}" in
  start) do_start ;;
  stop) do_stop ;;
  *) echo "usage: sh contrib/demo.sh start|stop" >&2; exit 2 ;;
esac
