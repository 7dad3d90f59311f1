# Shared by contrib/bench.sh and contrib/demo.sh (sourced, POSIX sh): running
# PostgreSQL's programs as the postgres user when root, finding free TCP ports, and
# creating, starting and stopping a throwaway PostgreSQL 15 cluster on 127.0.0.1.
#
# The sourcing script defines PGBIN (PostgreSQL's programs) and die MESSAGE.

is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs a PostgreSQL server program (or PgBouncer): as the postgres user when we are
# root (initdb, pg_ctl, postgres and PgBouncer refuse to run as root), directly otherwise.
as_pg() {
  if is_root; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# True when the binary $1 is PgBouncer (it refuses to run as root).
is_pgbouncer() { case "$(basename "$1")" in *pgbouncer*) return 0 ;; esac; return 1; }

# Dies unless initdb, pg_ctl, psql and pgbench are in PGBIN.
need_pg_programs() {
  for prog in initdb pg_ctl psql pgbench; do
    [ -x "$PGBIN/$prog" ] || die "$PGBIN/$prog not found (run 'make deps')"
  done
}

# Dies when we are root and there is no postgres user to run the server as.
need_postgres_user() {
  if is_root; then id postgres >/dev/null 2>&1 || die "running as root needs the postgres user"; fi
}

# TCP ports in LISTEN state, as 4-digit upper-case hex, from /proc (no extra tools).
listening_ports_hex() {
  cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    awk '$4 == "0A" { n = split($2, a, ":"); print a[n] }'
}
port_in_use() { listening_ports_hex | grep -qx "$(printf '%04X' "$1")"; }
# free_port START [TAKEN...]: the first port from START that is free and not TAKEN.
free_port() {
  p=$1
  shift
  while :; do
    taken=0
    for t in "$@"; do [ "$p" = "$t" ] && taken=1; done
    if [ $taken -eq 0 ] && ! port_in_use "$p"; then echo "$p"; return; fi
    p=$((p + 1))
    [ "$p" -lt 65000 ] || die "no free TCP port found"
  done
}

# Kills the process whose pid is in file $1 if its command line mentions $2.
kill_pidfile() {
  pidfile=$1 pattern=$2
  [ -f "$pidfile" ] || return 0
  pid=$(head -n 1 "$pidfile" 2>/dev/null | tr -dc 0-9)
  [ -n "$pid" ] || return 0
  if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$pattern"; then
    kill -TERM "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

# start_cluster DIR PORT CONF: initdb DIR/pgdata, append CONF (the caller's comment
# and settings) and the loopback port and the Unix socket in DIR to postgresql.conf,
# then start the server, logging to DIR/postgres.log. Dies on failure.
start_cluster() {
  as_pg "$PGBIN/initdb" -D "$1/pgdata" -U postgres -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$1/initdb.log" 2>&1 ||
    { cat "$1/initdb.log" >&2; die "initdb failed"; }
  cat >>"$1/pgdata/postgresql.conf" <<EOF

$3
listen_addresses = '127.0.0.1'
port = $2
unix_socket_directories = '$1'
EOF
  as_pg "$PGBIN/pg_ctl" -D "$1/pgdata" -l "$1/postgres.log" -w -t 60 start >/dev/null ||
    { tail -n 20 "$1/postgres.log" >&2; die "PostgreSQL did not start"; }
}

# create_owner_db DIR PORT NAME: a login role NAME with password NAME, owning a
# database NAME, created over the Unix socket in DIR.
create_owner_db() {
  "$PGBIN/psql" -X -q -h "$1" -p "$2" -U postgres -d postgres -v ON_ERROR_STOP=1 <<EOF
CREATE ROLE $3 LOGIN PASSWORD '$3';
CREATE DATABASE $3 OWNER $3;
EOF
}

# stop_cluster PGDATA MODE PATTERN: pg_ctl stop -m MODE, or failing that, kill the
# postmaster if its command line mentions PATTERN. Nothing when it is not running.
stop_cluster() {
  [ -f "$1/postmaster.pid" ] || return 0
  as_pg "$PGBIN/pg_ctl" -D "$1" -m "$2" -w -t 30 stop >/dev/null 2>&1 ||
    kill_pidfile "$1/postmaster.pid" "$3"
}
