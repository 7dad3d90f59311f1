#!/bin/sh
# Benchmarks pgsluice against Debian's PgBouncer and against PostgreSQL itself, and
# on request (BENCH_PEERS=1) against today's PgBouncer and Odyssey.
#
# Usage: sh contrib/bench.sh          (what `make bench` runs)
#        BENCH_PEERS=1 sh contrib/bench.sh   (`make bench-peers`)
#
# Starts one throwaway PostgreSQL 15 (pgbench -i -s 10), PgBouncer and pgsluice side
# by side with equivalent settings (transaction pooling, default_pool_size 8), then
# runs pgbench select-only (-S) for {1, 32 clients} x {simple, extended, prepared}
# against direct / pgbouncer / pgsluice in interleaved rounds, so that drift of the
# machine hits every target alike. Prints, per case and target: the median tps, the
# ratio to direct, the proxy's CPU time per transaction (utime+stime from
# /proc/PID/stat, all threads), failed transactions and aborted clients.
#
# Environment:
#   BENCH_TIME     seconds per pgbench run (default 10)
#   BENCH_ROUNDS   interleaved rounds (default 3); 6 cases x 3 targets per round
#   BENCH_SCALE    pgbench scale (default 10)
#   BENCH_AUTH     client auth of both poolers: md5 (default) or trust
#   BENCH_CASES    clients:mode[:tls] list (default: all six cases, plus with TLS
#                  32:simple:tls and 8:churn:tls); mode is simple, extended,
#                  prepared or churn (pgbench -C: a new connection, and with :tls a
#                  TLS handshake, per transaction); :tls runs pgbench with
#                  sslmode=require (the others with sslmode=disable)
#   BENCH_TLS      1 (default when the openssl command exists): a self-signed
#                  certificate is made, PostgreSQL runs with ssl = on and both
#                  poolers with client_tls_sslmode = prefer on that certificate
#                  (server_tls_sslmode = disable, so only the client side differs);
#                  0: no TLS rows
#   BENCH_IDLE     idle logged-in clients opened per pooler to measure memory per
#                  idle client (RSS growth / clients; RSS summed over the pooler's
#                  processes), plain and with TLS, each on a freshly restarted pooler
#                  (default 10000; 0 skips the step). The script raises its own open
#                  file limit (to fs.nr_open when root) for the poolers it starts,
#                  and spreads the clients over loopback addresses 127.0.0.1, .2, ...
#                  (one per 25,000 clients: Linux has about 28,000 source ports per
#                  destination address and port), which every pooler listens on
#   BENCH_IDLE_TARGETS  the targets measured, each TARGET or TARGET:COUNT (COUNT
#                  instead of BENCH_IDLE for it); default: every pooler in
#                  BENCH_TARGETS. E.g. BENCH_IDLE_TARGETS=pgsluice-w1:100000
#   BENCH_IDLE_ADDRS  the number of loopback addresses instead (a test of the spreading)
#   BENCH_IDLE_TLS 1 (default when BENCH_TLS=1): the idle step is also run with TLS
#                  clients; 0: plain clients only
#   BENCH_IDLE_WARM  clients logged in (and kept) before the baseline of that measure
#                  (default 100), so that one-time first-use costs are not counted
#                  per client; the growth from the fresh start is printed too
#   BENCH_LOGIN    1 (default): a login-rate step, pgbench -C -S with 8 clients as a
#                  user that is in no auth_file: both poolers look its secret up
#                  with auth_user/auth_query (a SECURITY DEFINER function). Rows:
#                  direct, pgbouncer (which queries at every login), pgsluice-cold
#                  (freshly started, empty auth cache, first BENCH_LOGIN_COLD
#                  seconds, default 3) and pgsluice-warm (the next run, cache warm);
#                  skipped for pgsluice with a message when it does not serve such
#                  users; with BENCH_PEERS=1 also pgbouncer-new (the peers' PgBouncer,
#                  the same settings as pgbouncer). 0: no login step
#   BENCH_POOL_SIZE  default_pool_size of both poolers (default 8; 20 for the
#                  "200 clients over 20 servers" row: BENCH_CASES=200:simple)
#   BENCH_TARGETS  targets to run (default: direct pgbouncer pgsluice pgsluice-w1,
#                  and with BENCH_PEERS=1 pgbouncer-new odyssey)
#   BENCH_PEERS    1: also run today's releases of the peers, from a throwaway Debian
#                  root of suite BENCH_PEERS_SUITE made by contrib/newer-debian.sh
#                  (debootstrap from Debian's archive, about 2 minutes the first time;
#                  kept in /var/tmp/pgsluice-newer/SUITE, removed by `sh
#                  contrib/newer-debian.sh remove` with NEWER_SUITE=SUITE). Targets
#                  pgbouncer-new (that suite's PgBouncer, the same pgbouncer.ini as
#                  pgbouncer) and odyssey (its Odyssey, with the equivalent
#                  odyssey.conf: same listen address, PostgreSQL, user and password,
#                  auth, pool "transaction", pool_size; workers
#                  BENCH_ODYSSEY_WORKERS, default 1; prepared statements kept per
#                  server with pool_reserve_prepared_statement). Both run inside the
#                  root (chroot, as the postgres user; the host's /tmp is mounted
#                  there) and take part in the same interleaved rounds. Needs root.
#                  0 (default): nothing of this, the benchmark runs as without it
#   BENCH_PEERS_SUITE  Debian suite of the peers (default forky, Debian's testing:
#                  PgBouncer 1.26.1 and Odyssey 1.5.2 when this was written)
#   BENCH_WORKERS  workers of the pgsluice (and pgsluice-base) target (default: not
#                  set in its config, so pgsluice chooses: see workers in pgsluice(5));
#                  pgsluice-w1 always runs workers = 1
#   PGSLUICE_BIN   pgsluice binary (default ./pgsluice); any pgbouncer-compatible
#                  pooler can stand in, e.g. /usr/sbin/pgbouncer
#   BENCH_BASE_BIN a second pgsluice binary (an older build) run as target
#                  pgsluice-base with the same settings as pgsluice, for a
#                  before/after comparison in one run (added to the targets)
#   PGBOUNCER_BIN  PgBouncer binary (default /usr/sbin/pgbouncer)
#   PGBIN          PostgreSQL's programs (default /usr/lib/postgresql/15/bin)
#
# Everything runs on 127.0.0.1 and in a temporary directory that is removed on exit,
# with every process this script started (and the peers' root's mounts). The table
# starts with the date, the machine, the versions that ran and the command, and is
# also saved to build/bench-last.txt.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SLUICE=${PGSLUICE_BIN:-$ROOT/pgsluice}
BOUNCER=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
TIME=${BENCH_TIME:-10}
ROUNDS=${BENCH_ROUNDS:-3}
SCALE=${BENCH_SCALE:-10}
AUTH=${BENCH_AUTH:-md5}
POOL_SIZE=${BENCH_POOL_SIZE:-8}
BASE=${BENCH_BASE_BIN:-}
PEERS=${BENCH_PEERS:-0}
case " ${BENCH_TARGETS:-} " in *" pgbouncer-new "* | *" odyssey "*) PEERS=1 ;; esac
PEERS_SUITE=${BENCH_PEERS_SUITE:-forky}
ODYSSEY_WORKERS=${BENCH_ODYSSEY_WORKERS:-1}
case "${BENCH_WORKERS:-0}" in *[!0-9]*) echo "bench: BENCH_WORKERS: not a number" >&2; exit 1 ;; esac
SLUICE_WORKERS=${BENCH_WORKERS:-}
TARGETS=${BENCH_TARGETS:-"direct pgbouncer pgsluice pgsluice-w1${BASE:+ pgsluice-base}"}
[ "$PEERS" = 1 ] && [ -z "${BENCH_TARGETS:-}" ] && TARGETS="$TARGETS pgbouncer-new odyssey"
TLS=${BENCH_TLS:-1}
command -v openssl >/dev/null 2>&1 || TLS=0
IDLE=${BENCH_IDLE:-10000}
IDLE_WARM=${BENCH_IDLE_WARM:-100}
IDLE_TLS=${BENCH_IDLE_TLS:-$TLS}
[ "$TLS" = 1 ] || IDLE_TLS=0
# Open files: the poolers inherit the largest limit this process can take: the hard
# limit, first raised to fs.nr_open (which needs CAP_SYS_RESOURCE; a container may not
# have it). A pooler needs one descriptor per client, and some for its listening sockets,
# server connections and files.
ulimit -H -n "$(cat /proc/sys/fs/nr_open)" 2>/dev/null || true
ulimit -n "$(ulimit -H -n)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
[ "$FD_LIMIT" = unlimited ] && FD_LIMIT=$(cat /proc/sys/fs/nr_open)
IDLE_FIT=$((FD_LIMIT - IDLE_WARM - 300))
IDLE_NOTE=""
# The idle step's targets with their counts (TARGET:COUNT), and the largest count. A
# count above what the open-file limit allows is lowered to the largest that fits.
IDLE_LIST=""
IDLE_MAX=0
for e in ${BENCH_IDLE_TARGETS:-$TARGETS}; do
  t=${e%%:*} n=$IDLE
  [ "$t" = direct ] && continue
  case "$e" in *:*) n=${e#*:} ;; esac
  case "$n" in '' | *[!0-9]*) echo "bench: BENCH_IDLE_TARGETS: bad count in $e" >&2; exit 1 ;; esac
  [ "$n" -gt 0 ] || continue
  if [ "$n" -gt "$IDLE_FIT" ]; then
    IDLE_NOTE="$IDLE_NOTE$t: $n idle clients asked, $IDLE_FIT measured: a process may open $FD_LIMIT files here (hard limit; raising it needs CAP_SYS_RESOURCE, fs.nr_open is $(cat /proc/sys/fs/nr_open)).
"
    n=$IDLE_FIT
  fi
  IDLE_LIST="$IDLE_LIST $t:$n"
  [ "$n" -gt "$IDLE_MAX" ] && IDLE_MAX=$n
done
# Every pooler listens on 127.0.0.1 .. 127.0.0.N: one address per 25,000 idle clients.
NADDR=${BENCH_IDLE_ADDRS:-$(((IDLE_MAX + IDLE_WARM) / 25000 + 1))}
LISTEN_ADDRS=127.0.0.1
a=2
while [ "$a" -le "$NADDR" ]; do LISTEN_ADDRS="$LISTEN_ADDRS,127.0.0.$a"; a=$((a + 1)); done
LOGIN=${BENCH_LOGIN:-1}
CASES=${BENCH_CASES:-"1:simple 1:extended 1:prepared 32:simple 32:extended 32:prepared"}
[ "$TLS" = 1 ] && [ -z "${BENCH_CASES:-}" ] && CASES="$CASES 32:simple:tls 8:churn:tls"

say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

# as_pg, is_pgbouncer, free_port, port_in_use, kill_pidfile, start_cluster, ...
. "$ROOT/contrib/pgcluster.sh"

# CPU time of a process and all its threads, in clock ticks.
cpu_ticks() {
  [ -r "/proc/$1/stat" ] || { echo 0; return; }
  # Fields after "(comm) ": state is $1, utime $12, stime $13.
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# The peers' Debian root (BENCH_PEERS=1): contrib/newer-debian.sh with its suite and
# packages.
PEER_PACKAGES="pgbouncer odyssey"
newer_debian() {
  NEWER_SUITE=$PEERS_SUITE NEWER_PACKAGES=$PEER_PACKAGES sh "$ROOT/contrib/newer-debian.sh" "$@"
}
PEER_SHELLS=""   # the newer-debian.sh processes that run a peer (or hold the mounts)
FILE_MAX_SAVED=""

# stop_target NAME: stops a pooler target started by this script (its pid file). Odyssey
# sets its own process title: its command line does not name $WORK.
stop_target() {
  case "$1" in
    odyssey) kill_pidfile "$WORK/$1.pid" odyssey ;;
    *) kill_pidfile "$WORK/$1.pid" "$WORK" ;;
  esac
}

WORK=""
cleanup() {
  if [ -n "$FILE_MAX_SAVED" ]; then
    echo "$FILE_MAX_SAVED" >/proc/sys/fs/file-max 2>/dev/null ||
      say "could not restore fs.file-max to $FILE_MAX_SAVED"
  fi
  [ -n "$WORK" ] && [ -d "$WORK" ] || return 0
  stop_target pgbouncer-new
  stop_target pgbouncer-new-aq
  stop_target odyssey
  # Last, the process that holds the root's mounts: its newer-debian.sh unmounts them.
  kill_pidfile "$WORK/peers-holder.pid" sleep
  for p in $PEER_SHELLS; do wait "$p" 2>/dev/null || true; done
  kill_pidfile "$WORK/pgbouncer.pid" "$WORK"
  kill_pidfile "$WORK/pgsluice.pid" "$WORK"
  kill_pidfile "$WORK/pgsluice-w1.pid" "$WORK"
  kill_pidfile "$WORK/pgsluice-base.pid" "$WORK"
  kill_pidfile "$WORK/pgbouncer-aq.pid" "$WORK"
  kill_pidfile "$WORK/pgsluice-aq.pid" "$WORK"
  stop_cluster "$WORK/pgdata" immediate "$WORK"
  rm -rf "$WORK"
}

need_pg_programs
[ -x "$BOUNCER" ] || die "$BOUNCER not found (run 'make deps')"
[ -x "$SLUICE" ] || die "$SLUICE not found (run 'make pgsluice', or set PGSLUICE_BIN)"
case "$AUTH" in md5|trust) ;; *) die "BENCH_AUTH must be md5 or trust" ;; esac
need_postgres_user
for t in $TARGETS; do
  case "$t" in
    direct | pgbouncer | pgsluice | pgsluice-w1) ;;
    pgsluice-base) [ -n "$BASE" ] || die "target pgsluice-base needs BENCH_BASE_BIN" ;;
    pgbouncer-new | odyssey) [ "$PEERS" = 1 ] || die "target $t needs BENCH_PEERS=1" ;;
    *) die "unknown target $t" ;;
  esac
done
for e in $IDLE_LIST; do
  case " $TARGETS " in *" ${e%%:*} "*) ;; *) die "BENCH_IDLE_TARGETS: ${e%%:*} is not in BENCH_TARGETS" ;; esac
done

NEWROOT=""
if [ "$PEERS" = 1 ]; then
  is_root || die "BENCH_PEERS=1 needs root (debootstrap and chroot)"
  say "peers: Debian $PEERS_SUITE root with $PEER_PACKAGES (contrib/newer-debian.sh)"
  NEWROOT=$(newer_debian ensure) ||
    die "BENCH_PEERS=1: could not make the Debian $PEERS_SUITE root with $PEER_PACKAGES (see above)"
  [ -x "$NEWROOT/usr/sbin/pgbouncer" ] || die "no /usr/sbin/pgbouncer in $NEWROOT"
  [ -x "$NEWROOT/usr/bin/odyssey" ] || die "no /usr/bin/odyssey in $NEWROOT"
fi

# fs.file-max is raised for the run if the idle step needs more (a pooler's and a
# client's descriptor per idle client), and restored on exit.
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
[ -n "$IDLE_NOTE" ] && printf '%s' "$IDLE_NOTE" | sed 's/^/bench: /' >&2
file_max=$(cat /proc/sys/fs/file-max)
need_files=$((4 * (IDLE_MAX + IDLE_WARM) + 100000))
if [ "$file_max" -lt "$need_files" ]; then
  is_root || die "the idle step needs fs.file-max >= $need_files (it is $file_max)"
  FILE_MAX_SAVED=$file_max
  echo "$need_files" >/proc/sys/fs/file-max || die "could not raise fs.file-max to $need_files"
  say "fs.file-max raised from $file_max to $need_files for this run"
fi
WORK=$(mktemp -d /tmp/pgsluice-bench.XXXXXX)
is_root && chown postgres: "$WORK"

PGPORT=$(free_port 25432)
BPORT=$(free_port 26432 "$PGPORT")
SPORT=$(free_port 27432 "$PGPORT" "$BPORT")
S1PORT=$(free_port 28432 "$PGPORT" "$BPORT" "$SPORT")
S2PORT=$(free_port 29432 "$PGPORT" "$BPORT" "$SPORT" "$S1PORT")
LBPORT=$(free_port 30432 "$PGPORT" "$BPORT" "$SPORT" "$S1PORT" "$S2PORT")
LSPORT=$(free_port 31432 "$PGPORT" "$BPORT" "$SPORT" "$S1PORT" "$S2PORT" "$LBPORT")
# Below the ephemeral range (32768 and up): a client socket's source port there, or one
# in TIME_WAIT, would stop a pooler that binds without SO_REUSEADDR (Odyssey).
NPORT=$(free_port 23432 "$PGPORT" "$BPORT" "$SPORT" "$S1PORT" "$S2PORT" "$LBPORT" "$LSPORT")
OPORT=$(free_port 24432 "$PGPORT" "$BPORT" "$SPORT" "$S1PORT" "$S2PORT" "$LBPORT" "$LSPORT" "$NPORT")

say "PostgreSQL 15 on 127.0.0.1:$PGPORT, PgBouncer on $BPORT, pgsluice on $SPORT and $S1PORT ($WORK)"
[ "$PEERS" = 1 ] && say "peers from Debian $PEERS_SUITE: PgBouncer on $NPORT, Odyssey on $OPORT"
PGTLS=""
if [ "$TLS" = 1 ]; then
  # One self-signed certificate for PostgreSQL and both poolers (ECDSA P-256).
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=127.0.0.1 -keyout "$WORK/tls.key" -out "$WORK/tls.crt" >"$WORK/openssl.log" 2>&1 ||
    { cat "$WORK/openssl.log" >&2; die "openssl req failed"; }
  chmod 600 "$WORK/tls.key"
  is_root && chown postgres: "$WORK/tls.key" "$WORK/tls.crt"
  PGTLS="ssl = on
ssl_cert_file = '$WORK/tls.crt'
ssl_key_file = '$WORK/tls.key'"
fi
# PostgreSQL takes the most clients of a case directly while every pooler keeps its pool
# of server connections open (with the peers, five pools).
maxc=0
for c in $CASES; do [ "${c%%:*}" -gt "$maxc" ] && maxc=${c%%:*}; done
npools=$(echo $TARGETS | wc -w)
MAXCONN=$((maxc + npools * POOL_SIZE + 50))
[ "$MAXCONN" -lt 250 ] && MAXCONN=250
start_cluster "$WORK" "$PGPORT" "\
# pgsluice benchmark: loopback only, everything in memory, durability not needed.
max_connections = $MAXCONN
shared_buffers = 512MB
fsync = off
synchronous_commit = off
full_page_writes = off
$PGTLS"
create_owner_db "$WORK" "$PGPORT" bench

export PGPASSWORD=bench
say "pgbench -i -s $SCALE"
"$PGBIN/pgbench" -h 127.0.0.1 -p "$PGPORT" -U bench -i -s "$SCALE" -q bench >"$WORK/init.log" 2>&1 ||
  { cat "$WORK/init.log" >&2; die "pgbench -i failed"; }

(umask 077 && printf '"bench" "bench"\n' >"$WORK/userlist.txt")
# write_ini NAME PORT: the same settings for both poolers.
write_ini() {
  cat >"$WORK/$1.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench

[pgbouncer]
listen_addr = $LISTEN_ADDRS
listen_port = $2
unix_socket_dir = $WORK
auth_type = $AUTH
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = $((IDLE_MAX + IDLE_WARM + 300))
logfile = $WORK/$1.log
pidfile = $WORK/$1.pid
EOF
  if [ "$TLS" = 1 ]; then
    cat >>"$WORK/$1.ini" <<EOF
client_tls_sslmode = prefer
client_tls_key_file = $WORK/tls.key
client_tls_cert_file = $WORK/tls.crt
server_tls_sslmode = disable
EOF
  fi
}
write_ini pgbouncer "$BPORT"
write_ini pgsluice "$SPORT"
write_ini pgsluice-w1 "$S1PORT"
[ -n "$BASE" ] && write_ini pgsluice-base "$S2PORT"
[ "$PEERS" = 1 ] && write_ini pgbouncer-new "$NPORT"
# write_odyssey_conf: Odyssey's equivalent of the poolers' .ini (its own format).
write_odyssey_conf() {
  case "$AUTH" in md5) oauth=md5 ;; trust) oauth=none ;; esac
  otls=""
  if [ "$TLS" = 1 ]; then
    otls="tls \"allow\"
  tls_cert_file \"$WORK/tls.crt\"
  tls_key_file \"$WORK/tls.key\""
  fi
  {
    cat <<EOF
# pgsluice benchmark: the settings of the pgbouncer.ini beside this file, for Odyssey.
daemonize no
pid_file "$WORK/odyssey.pid"
log_file "$WORK/odyssey.log"
log_to_stdout no
log_format "%p %t %l [%i %s] (%c) %m\n"
log_debug no
log_config no
log_session no
log_query no
log_stats no
unix_socket_dir "$WORK"
unix_socket_mode "0644"
locks_dir "$WORK/odyssey-locks"
workers $ODYSSEY_WORKERS
resolvers 1
client_max $((IDLE_MAX + IDLE_WARM + 300))
EOF
    for a in $(echo "$LISTEN_ADDRS" | tr , ' '); do
      cat <<EOF

listen {
  host "$a"
  port $OPORT
  $otls
}
EOF
    done
    cat <<EOF

storage "postgres_server" {
  type "remote"
  host "127.0.0.1"
  port $PGPORT
}

database "bench" {
  user "bench" {
    authentication "$oauth"
    password "bench"
    storage "postgres_server"
    storage_user "bench"
    storage_password "bench"
    pool "transaction"
    pool_size $POOL_SIZE
    pool_reserve_prepared_statement yes
  }
}
EOF
  } >"$WORK/odyssey.conf"
  mkdir -p "$WORK/odyssey-locks"
}
[ "$PEERS" = 1 ] && write_odyssey_conf
# pgsluice: its default workers (or BENCH_WORKERS) and, in the second instance, one worker
# like PgBouncer's single thread; both serve repeated unnamed Parses from the server cache.
if ! is_pgbouncer "$SLUICE"; then
  for t in pgsluice ${BASE:+pgsluice-base}; do
    [ -n "$SLUICE_WORKERS" ] && printf 'workers = %s\n' "$SLUICE_WORKERS" >>"$WORK/$t.ini"
    printf 'cache_unnamed_statements = 1\n' >>"$WORK/$t.ini"
  done
  printf 'workers = 1\ncache_unnamed_statements = 1\n' >>"$WORK/pgsluice-w1.ini"
fi
is_root && chown -R postgres: "$WORK"

# The port of a target.
target_port() {
  case "$1" in
    direct) echo "$PGPORT" ;; pgbouncer) echo "$BPORT" ;; pgsluice) echo "$SPORT" ;;
    pgsluice-w1) echo "$S1PORT" ;; pgsluice-base) echo "$S2PORT" ;;
    pgbouncer-new) echo "$NPORT" ;; odyssey) echo "$OPORT" ;;
    *) die "unknown target $1" ;;
  esac
}
# The pid of a running pooler target (nothing for direct).
target_pid() {
  [ "$1" = direct ] || head -n 1 "$WORK/$1.pid"
}

# The peers run inside their Debian root, in the foreground under a newer-debian.sh
# `runpg` that this script runs in the background. One more of those, started first and
# ended last, holds the root's mounts (/proc, /dev, the host's /tmp): the others find them
# mounted and leave them alone, so that a peer's restart does not unmount them under the
# other. Both peers raise their soft open-file limit to the hard one.
start_peer_holder() {
  newer_debian runpg sh -c 'echo $$ >"$1"; exec sleep 1000000' sh "$WORK/peers-holder.pid" \
    >"$WORK/peers-holder.out" 2>&1 &
  PEER_SHELLS="$PEER_SHELLS $!"
  i=0
  until [ -s "$WORK/peers-holder.pid" ]; do
    i=$((i + 1))
    [ $i -gt 300 ] && { cat "$WORK/peers-holder.out" >&2; die "could not enter the $PEERS_SUITE root"; }
    sleep 0.1
  done
}
[ "$PEERS" = 1 ] && start_peer_holder

# start_pooler NAME PORT: starts target NAME (its settings in $WORK/NAME.ini or .conf).
start_pooler() {
  rm -f "$WORK/$1.pid"
  case "$1" in
    pgbouncer) start_pooler_bin "$1" "$BOUNCER" "$2" ;;
    pgsluice | pgsluice-w1) start_pooler_bin "$1" "$SLUICE" "$2" ;;
    pgsluice-base) start_pooler_bin "$1" "$BASE" "$2" ;;
    pgbouncer-new | odyssey)
      if [ "$1" = odyssey ]; then
        set -- "$1" "$2" /usr/bin/odyssey "$WORK/odyssey.conf"
      else
        set -- "$1" "$2" /usr/sbin/pgbouncer "$WORK/$1.ini"
      fi
      newer_debian runpg sh -c 'ulimit -n "$(ulimit -Hn)"; exec "$@"' sh "$3" "$4" \
        >"$WORK/$1.out" 2>&1 &
      PEER_SHELLS="$PEER_SHELLS $!"
      wait_listening "$1" "$3" "$2"
      ;;
    *) die "unknown target $1" ;;
  esac
}
# wait_listening NAME BINARY PORT
wait_listening() {
  i=0
  until port_in_use "$3" && [ -s "$WORK/$1.pid" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ]; then
      cat "$WORK/$1.out" >&2
      [ -f "$WORK/$1.log" ] && tail -n 20 "$WORK/$1.log" >&2
      die "$1 ($2) is not listening on port $3"
    fi
    sleep 0.1
  done
}
# start_pooler_bin NAME BINARY PORT
start_pooler_bin() {
  if is_pgbouncer "$2"; then
    # runuser resets the soft open-file limit to 1024 and PgBouncer does not raise its
    # own: start it with the hard limit, as pgsluice raises its own at start.
    as_pg sh -c 'ulimit -n "$(ulimit -Hn)"; exec "$@"' sh "$2" -d "$WORK/$1.ini" \
      >"$WORK/$1.out" 2>&1 || true
  else
    "$2" -d "$WORK/$1.ini" >"$WORK/$1.out" 2>&1 || true
  fi
  wait_listening "$@"
}
for t in $TARGETS; do
  [ "$t" = direct ] || start_pooler "$t" "$(target_port "$t")"
done
BVERSION=$("$BOUNCER" -V 2>/dev/null | head -n 1 || true)
NVERSION="" OVERSION=""
if [ "$PEERS" = 1 ]; then
  NVERSION="$(chroot "$NEWROOT" /usr/sbin/pgbouncer --version 2>/dev/null | head -n 1 || true), Debian package $(chroot "$NEWROOT" dpkg-query -W -f '${Version}' pgbouncer)"
  OVERSION="$(chroot "$NEWROOT" /usr/bin/odyssey --version 2>/dev/null | head -n 1 || true), Debian package $(chroot "$NEWROOT" dpkg-query -W -f '${Version}' odyssey)"
fi

RES="$WORK/results.tsv"
: >"$RES"
ntargets=$(echo $TARGETS | wc -w)
ncases=$(echo $CASES | wc -w)
nruns=$((ROUNDS * ncases * ntargets))
[ "$nruns" -gt 0 ] && say "$nruns runs of ${TIME}s: about $(((nruns * (TIME + 1) + 3 * 5 + 59) / 60)) min"

# run_one ROUND CLIENTS MODE[:tls] TARGET: one pgbench run, one line in results.tsv.
run_one() {
  case "$3" in
    *:tls) sslmode=require mode=${3%:tls} ;;
    *) sslmode=disable mode=$3 ;;
  esac
  case "$mode" in
    churn) flags="-C -M simple" ;;
    *) flags="-M $mode" ;;
  esac
  port=$(target_port "$4")
  pid=$(target_pid "$4")
  jobs=1
  [ "$2" -gt 1 ] && jobs=2
  out="$WORK/run-$1-$2-$(echo "$3" | tr : -)-$4.log"
  c0=0
  [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
  rc=0
  # shellcheck disable=SC2086
  PGSSLMODE=$sslmode "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench -n -S $flags -c "$2" \
    -j "$jobs" -T "$TIME" bench >"$out" 2>&1 || rc=$?
  c1=0
  [ -n "$pid" ] && c1=$(cpu_ticks "$pid")
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -n 1)
  xacts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -n 1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -n 1)
  aborted=$(grep -c 'client [0-9]* .*aborted' "$out" || true)
  printf '%s\t%s:%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${tps:-0}" \
    "${xacts:-0}" "${failed:-0}" "${aborted:-0}" "$((c1 - c0))" "$rc" >>"$RES"
  say "round $1 $2c $3 $4: tps ${tps:-0} failed ${failed:-0} aborted ${aborted:-0} (exit $rc)"
  if { [ "$rc" -ne 0 ] && [ "${aborted:-0}" -eq 0 ]; } || [ -z "$tps" ]; then
    tail -n 3 "$out" | sed 's/^/bench:   /' >&2
  fi
}

# Warm-up, not counted: fills PostgreSQL's cache and opens every pool's server
# connections, so that round 1 does not pay for them.
WARM=$((TIME < 5 ? TIME : 5))
WARM_TARGETS=$TARGETS
[ "$ROUNDS" -gt 0 ] && say "warm-up: ${WARM}s per target" || WARM_TARGETS=""
for t in $WARM_TARGETS; do
  port=$(target_port "$t")
  PGSSLMODE=disable "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench -n -S -M simple -c 32 -j 2 -T "$WARM" bench \
    >"$WORK/warmup-$t.log" 2>&1 || { tail -n 5 "$WORK/warmup-$t.log" >&2; die "warm-up of $t failed"; }
done

r=1
while [ "$r" -le "$ROUNDS" ]; do
  for c in $CASES; do
    for t in $TARGETS; do
      run_one "$r" "${c%%:*}" "${c#*:}" "$t"
    done
  done
  r=$((r + 1))
done

# Memory per idle client: RSS growth of each pooler while IDLE logged-in clients sit
# idle (plain text, and with TLS when BENCH_TLS=1), one line each in idle.tsv. The
# baseline is taken after IDLE_WARM clients of the same kind are logged in (and stay): what
# a pooler touches once, on its first clients (code pages of libcrypto and libc faulted in,
# a thread's malloc arena, buffers kept for reuse), is then not spread over the clients
# measured, for every pooler alike; both figures are printed.
# rss_kb PID: VmRSS of the process and of all its descendants, summed (kB).
rss_kb() {
  t=0
  for p in $1 $(descendants "$1"); do
    v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
    t=$((t + ${v:-0}))
  done
  echo "$t"
}
descendants() {
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    echo "$c"
    descendants "$c"
  done
}
# hold_idle N SSLMODE PORT NAME FD: starts N idle clients held until fd FD closes; waits
# for "ready" (1 when they are all in).
hold_idle() {
  fifo="$WORK/idle-$4.fifo"
  rm -f "$fifo" && mkfifo "$fifo"
  /usr/bin/python3 "$ROOT/contrib/idle_clients.py" "$3" "$1" "$2" bench bench bench \
    "$LISTEN_ADDRS" <"$fifo" >"$WORK/idle-$4.out" 2>&1 &
  IDLE_PIDS="$IDLE_PIDS $!"
  eval "exec $5>\"\$fifo\""
  i=0
  until grep -q '^ready' "$WORK/idle-$4.out" 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt $((3000 + $1 / 10)) ] || grep -q '^fail' "$WORK/idle-$4.out" 2>/dev/null; then break; fi
    sleep 0.1
  done
  grep -q '^ready' "$WORK/idle-$4.out" 2>/dev/null
}
idle_one() { # TARGET PID PORT SSLMODE COUNT
  cold=$(rss_kb "$2")
  ok=0
  IDLE_PIDS=""
  if hold_idle "$IDLE_WARM" "$4" "$3" "warm-$1-$4" 3; then
    sleep 1
    r0=$(rss_kb "$2")
    hold_idle "$5" "$4" "$3" "$1-$4" 4 && ok=1
    sleep 1
    r1=$(rss_kb "$2")
  fi
  exec 3>&- 4>&-
  for p in $IDLE_PIDS; do wait "$p" 2>/dev/null || true; done
  if [ "$ok" = 1 ]; then
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$4" "$(((r1 - r0) * 1024 / $5))" \
      "$(((r1 - cold) * 1024 / ($5 + IDLE_WARM)))" "$5" >>"$WORK/idle.tsv"
    say "idle $1 $4: RSS $cold kB at start, $r0 kB with $IDLE_WARM clients, $r1 kB with $5 more"
  else
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$4" "failed" "failed" "$5" >>"$WORK/idle.tsv"
    say "idle $1 $4: failed: $(tail -n 1 "$WORK/idle-$1-$4.out" "$WORK/idle-warm-$1-$4.out" 2>/dev/null | tail -n 1)"
  fi
}
: >"$WORK/idle.tsv"
for e in $IDLE_LIST; do
  t=${e%%:*} n=${e#*:}
  port=$(target_port "$t")
  modes=disable
  [ "$IDLE_TLS" = 1 ] && modes="disable require"
  for mode in $modes; do
    # A freshly started pooler for each measure, so that memory freed by the clients of
    # the previous one (kept by malloc) does not hide what these clients take.
    stop_target "$t"
    start_pooler "$t" "$port"
    idle_one "$t" "$(target_pid "$t")" "$port" "$mode" "$n"
  done
done

# Login rate with users from auth_query (issue 11): pgbench -C -S as aqbench, a role that
# is in no auth_file. Both poolers run auth_query as aqauth (a SECURITY DEFINER function
# that also counts its calls in the sequence aq_lookups). PgBouncer runs the query at every
# login; pgsluice keeps the verifier in its auth cache: pgsluice-cold is a fresh start with
# an empty cache (the first LOGIN_COLD seconds), pgsluice-warm the next run of the same
# instance. One line per run in login.tsv.
LOGIN_CLIENTS=8
LOGIN_COLD=${BENCH_LOGIN_COLD:-3}
[ "$LOGIN_COLD" -gt "$TIME" ] && LOGIN_COLD=$TIME
LOGIN_NOTE=""
LOGIN_TARGETS=""
: >"$WORK/login.tsv"
aq_lookups() {
  "$PGBIN/psql" -X -q -A -t -h "$WORK" -p "$PGPORT" -U postgres -d bench \
    -c "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM public.aq_lookups" 2>/dev/null ||
    echo 0
}
# write_login_ini NAME PORT: the same auth_query settings for both poolers.
write_login_ini() {
  cat >"$WORK/$1.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir = $WORK
auth_type = md5
auth_file = $WORK/userlist-aq.txt
auth_user = aqauth
auth_query = SELECT * FROM public.pgsluice_lookup(\$1)
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 100
logfile = $WORK/$1.log
pidfile = $WORK/$1.pid
EOF
}
# start_login_pooler NAME BINARY PORT: as start_pooler, but returns 1 when it does not come up.
start_login_pooler() {
  rm -f "$WORK/$1.pid"
  if is_pgbouncer "$2"; then
    as_pg "$2" -d "$WORK/$1.ini" >"$WORK/$1.out" 2>&1 || true
  else
    "$2" -d "$WORK/$1.ini" >"$WORK/$1.out" 2>&1 || true
  fi
  i=0
  until port_in_use "$3" && [ -s "$WORK/$1.pid" ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && return 1
    sleep 0.1
  done
}
# A fresh pgsluice-aq with an empty auth cache.
restart_sluice_aq() {
  kill_pidfile "$WORK/pgsluice-aq.pid" "$WORK"
  rm -f "$WORK/auth_cache.db" "$WORK/auth_cache.db-wal" "$WORK/auth_cache.db-shm"
  start_login_pooler pgsluice-aq "$SLUICE" "$LSPORT"
}
# login_run ROUND TARGET PORT PID SECONDS: one pgbench -C run, one line in login.tsv.
login_run() {
  out="$WORK/login-$1-$2.log"
  c0=0
  [ -n "$4" ] && c0=$(cpu_ticks "$4")
  q0=$(aq_lookups)
  rc=0
  PGPASSWORD=aqbench PGSSLMODE=disable "$PGBIN/pgbench" -h 127.0.0.1 -p "$3" -U aqbench -n -S \
    -C -M simple -c "$LOGIN_CLIENTS" -j 2 -T "$5" bench >"$out" 2>&1 || rc=$?
  c1=0
  [ -n "$4" ] && c1=$(cpu_ticks "$4")
  q1=$(aq_lookups)
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out" | head -n 1)
  xacts=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$out" | head -n 1)
  failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$out" | head -n 1)
  aborted=$(grep -c 'client [0-9]* .*aborted' "$out" || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "${tps:-0}" "${xacts:-0}" \
    "${failed:-0}" "${aborted:-0}" "$((c1 - c0))" "$((q1 - q0))" "$rc" >>"$WORK/login.tsv"
  say "login round $1 $2: logins/s ${tps:-0}, auth queries $((q1 - q0)), failed ${failed:-0} aborted ${aborted:-0} (exit $rc)"
  if [ "$rc" -ne 0 ] && [ "${aborted:-0}" -eq 0 ]; then
    tail -n 3 "$out" | sed 's/^/bench:   /' >&2
  fi
}
if [ "$LOGIN" = 1 ]; then
  say "login rate: pgbench -C -S, $LOGIN_CLIENTS clients, a user from auth_query"
  "$PGBIN/psql" -X -q -h "$WORK" -p "$PGPORT" -U postgres -d bench -v ON_ERROR_STOP=1 \
    >"$WORK/login-setup.log" 2>&1 <<'EOF' || { cat "$WORK/login-setup.log" >&2; die "login step: setup failed"; }
CREATE ROLE aqauth LOGIN PASSWORD 'aqauth';
SET password_encryption = 'md5';
CREATE ROLE aqbench LOGIN PASSWORD 'aqbench';
RESET password_encryption;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO aqbench;
CREATE SEQUENCE public.aq_lookups;
CREATE FUNCTION public.pgsluice_lookup(uname text, OUT usename name, OUT passwd text)
  RETURNS SETOF record LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS $$
BEGIN
  PERFORM nextval('public.aq_lookups');
  RETURN QUERY SELECT r.rolname,
      CASE WHEN r.rolvaliduntil < now() THEN NULL ELSE r.rolpassword END
    FROM pg_authid r WHERE r.rolname = uname AND r.rolcanlogin;
END $$;
REVOKE ALL ON FUNCTION public.pgsluice_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.pgsluice_lookup(text) TO aqauth;
EOF
  # aqbench's secret is md5, so that the client's side of a login costs pgbench little
  # and the poolers' own work per login is what the rate shows (a SCRAM secret makes
  # pgbench's PBKDF2 the bound: about 120 logins/s here whatever the pooler). PostgreSQL's
  # host lines are scram-sha-256: one md5 line for this role, first.
  as_pg sh -c "sed -i '1i host bench aqbench 127.0.0.1/32 md5' '$WORK/pgdata/pg_hba.conf'"
  "$PGBIN/psql" -X -q -h "$WORK" -p "$PGPORT" -U postgres -d bench -c 'select pg_reload_conf()' \
    >/dev/null
  (umask 077 && printf '"aqauth" "aqauth"\n' >"$WORK/userlist-aq.txt")
  write_login_ini pgbouncer-aq "$LBPORT"
  write_login_ini pgsluice-aq "$LSPORT"
  # With the peers, today's PgBouncer too (in their root, as pgbouncer-new runs).
  if [ "$PEERS" = 1 ]; then
    LNPORT=$(free_port 22432 "$PGPORT" "$BPORT" "$SPORT" "$S1PORT" "$S2PORT" "$LBPORT" "$LSPORT" "$NPORT" "$OPORT")
    write_login_ini pgbouncer-new-aq "$LNPORT"
  fi
  is_pgbouncer "$SLUICE" ||
    printf 'workers = 2\nauth_cache_file = %s/auth_cache.db\n' "$WORK" >>"$WORK/pgsluice-aq.ini"
  is_root && chown -R postgres: "$WORK"
  start_login_pooler pgbouncer-aq "$BOUNCER" "$LBPORT" ||
    die "pgbouncer-aq is not listening on port $LBPORT"
  LOGIN_TARGETS="direct pgbouncer"
  # pgsluice must accept the settings and log aqbench in; otherwise its rows are skipped.
  if ! restart_sluice_aq; then
    LOGIN_NOTE="pgsluice rows skipped: pgsluice refused the auth_query configuration: $(tail -n 2 "$WORK/pgsluice-aq.out" 2>/dev/null | tr '\n' ' ')"
  elif ! probe=$(PGPASSWORD=aqbench "$PGBIN/psql" -X -q -A -t -c 'select 1' \
    "host=127.0.0.1 port=$LSPORT user=aqbench dbname=bench sslmode=disable connect_timeout=10" 2>&1); then
    LOGIN_NOTE="pgsluice rows skipped: pgsluice did not log in a user from auth_query: $(echo "$probe" | head -n 1)"
  else
    LOGIN_TARGETS="direct pgbouncer pgsluice-cold pgsluice-warm"
  fi
  [ -n "$LOGIN_NOTE" ] && say "login: $LOGIN_NOTE"
  if [ "$PEERS" = 1 ]; then
    newer_debian runpg /usr/sbin/pgbouncer "$WORK/pgbouncer-new-aq.ini" >"$WORK/pgbouncer-new-aq.out" 2>&1 &
    PEER_SHELLS="$PEER_SHELLS $!"
    wait_listening pgbouncer-new-aq /usr/sbin/pgbouncer "$LNPORT"
    LOGIN_TARGETS="$LOGIN_TARGETS pgbouncer-new"
  fi
  BLPID=$(cat "$WORK/pgbouncer-aq.pid")
  r=1
  while [ "$r" -le "$ROUNDS" ]; do
    login_run "$r" direct "$PGPORT" "" "$TIME"
    login_run "$r" pgbouncer "$LBPORT" "$BLPID" "$TIME"
    [ "$PEERS" = 1 ] && login_run "$r" pgbouncer-new "$LNPORT" "$(target_pid pgbouncer-new-aq)" "$TIME"
    if [ -z "$LOGIN_NOTE" ]; then
      if restart_sluice_aq; then
        SLPID=$(cat "$WORK/pgsluice-aq.pid")
        login_run "$r" pgsluice-cold "$LSPORT" "$SLPID" "$LOGIN_COLD"
        login_run "$r" pgsluice-warm "$LSPORT" "$SLPID" "$TIME"
      else
        say "login round $r: pgsluice-aq did not restart"
      fi
    fi
    r=$((r + 1))
  done
  kill_pidfile "$WORK/pgbouncer-aq.pid" "$WORK"
  kill_pidfile "$WORK/pgsluice-aq.pid" "$WORK"
  if [ "$PEERS" = 1 ]; then stop_target pgbouncer-new-aq; fi
fi

CLK=$(getconf CLK_TCK 2>/dev/null || echo 100)
mkdir -p "$ROOT/build"
OUT="$ROOT/build/bench-last.txt"
MODEL=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
MEM=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
GITDESC=$(git -C "$ROOT" describe --tags --always --dirty 2>/dev/null || echo unknown)
PGVERSION=$("$PGBIN/postgres" --version 2>/dev/null || echo unknown)
# The command as run: the benchmark's environment variables that were set, then the script.
COMMAND="$(env | grep -E '^(BENCH_[A-Z0-9_]*|PGSLUICE_BIN|PGBOUNCER_BIN|PGBIN)=' | sort |
  sed "s/^\([^=]*\)=\(.*\)$/\1='\2'/" | tr '\n' ' ')sh contrib/bench.sh"
{
  echo "pgsluice benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), pgbench -S -T $TIME, $ROUNDS rounds, scale $SCALE"
  echo "machine: $(nproc) CPUs ($MODEL), $MEM, Linux $(uname -r)"
  echo "command: $COMMAND"
  echo "pools: transaction mode, default_pool_size $POOL_SIZE, auth $AUTH; pgsluice workers ${BENCH_WORKERS:-default},"
  echo "pgsluice-w1 workers 1; both pgsluice with cache_unnamed_statements = 1"
  echo "postgresql: $PGVERSION"
  echo "pgbouncer: $BOUNCER ($BVERSION)"
  echo "pgsluice:  $SLUICE ($GITDESC)$(is_pgbouncer "$SLUICE" && echo '  (PgBouncer standing in for pgsluice)')"
  [ -n "$BASE" ] && echo "pgsluice-base: $BASE (same settings as pgsluice)"
  if [ "$PEERS" = 1 ]; then
    echo "pgbouncer-new: $NVERSION, from Debian $PEERS_SUITE (same pgbouncer.ini as pgbouncer)"
    echo "odyssey: $OVERSION, from Debian $PEERS_SUITE (workers $ODYSSEY_WORKERS, pool \"transaction\","
    echo "  pool_size $POOL_SIZE, pool_reserve_prepared_statement yes)"
  fi
  [ -s "$RES" ] && echo
  [ -s "$RES" ] && awk -F '\t' -v clk="$CLK" -v targets="$TARGETS" -v cases="$CASES" '
    function median(list,   a, n, i, j, t) {
      n = split(list, a, " ")
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
      if (n == 0) return 0
      return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
      k = $2 SUBSEP $3
      tps[k] = tps[k] " " sprintf("%.0f", $4); xacts[k] += $5; failed[k] += $6; aborted[k] += $7; cpu[k] += $8
    }
    END {
      printf "%-20s %-11s %11s %6s %12s %7s %8s  %s\n", "case", "target", "median tps", "ratio", "CPU us/xact", "failed", "aborted", "tps per round"
      nc = split(cases, cs, " "); nt = split(targets, ts, " ")
      for (i = 1; i <= nc; i++) {
        nf = split(cs[i], cm, ":")
        label = cm[1] (cm[1] == 1 ? " client " : " clients ") cm[2] (nf > 2 ? " TLS" : "")
        base = median(tps[cs[i] SUBSEP "direct"])
        for (j = 1; j <= nt; j++) {
          k = cs[i] SUBSEP ts[j]
          m = median(tps[k])
          ratio = base > 0 ? sprintf("%.2f", m / base) : "-"
          us = (ts[j] == "direct") ? "-" : (xacts[k] > 0 ? sprintf("%.1f", cpu[k] / clk * 1e6 / xacts[k]) : "-")
          printf "%-20s %-11s %11.0f %6s %12s %7d %8d %s\n", (j == 1 ? label : ""), ts[j], m, ratio, us, failed[k], aborted[k], tps[k]
        }
      }
      # What -M prepared gains over -M simple at 32 clients, per target (the measure of issue 4).
      ks = "32:simple"; kp = "32:prepared"
      if (index(" " cases " ", " " ks " ") && index(" " cases " ", " " kp " ")) {
        print ""
        print "32 clients, -M prepared over -M simple (median tps ratio; per round; CPU us/xact):"
        for (j = 1; j <= nt; j++) {
          a = tps[ks SUBSEP ts[j]]; b = tps[kp SUBSEP ts[j]]
          ms = median(a); mp = median(b)
          na = split(a, ra, " "); split(b, rb, " "); rounds = ""; rlist = ""
          for (i = 1; i <= na; i++) if (ra[i] > 0) { r = rb[i] / ra[i]; rounds = rounds sprintf(" %.2f", r); rlist = rlist " " r }
          cs_ = (xacts[ks SUBSEP ts[j]] > 0 && ts[j] != "direct") ? sprintf("%.1f", cpu[ks SUBSEP ts[j]] / clk * 1e6 / xacts[ks SUBSEP ts[j]]) : "-"
          cp_ = (xacts[kp SUBSEP ts[j]] > 0 && ts[j] != "direct") ? sprintf("%.1f", cpu[kp SUBSEP ts[j]] / clk * 1e6 / xacts[kp SUBSEP ts[j]]) : "-"
          printf "  %-11s %5.2f  (median of per-round ratios %.2f; rounds%s)  CPU %s -> %s\n", ts[j], (ms > 0 ? mp / ms : 0), median(rlist), rounds, cs_, cp_
        }
      }
    }' "$RES"
  if [ -s "$WORK/login.tsv" ]; then
    echo
    echo "login rate: pgbench -C -S -M simple, $LOGIN_CLIENTS clients, -T $TIME (pgsluice-cold: the first"
    echo "${LOGIN_COLD}s after a fresh start with an empty auth cache; pgsluice-warm: the next run), as"
    echo "aqbench, a role with an md5 secret in no auth_file that both poolers look up with"
    echo "auth_user/auth_query (auth_type md5). tps: logins/s; ratio: to"
    echo "pgbouncer; auth queries: runs of the lookup function, summed over rounds."
    [ -n "$LOGIN_NOTE" ] && echo "$LOGIN_NOTE"
    awk -F '\t' -v clk="$CLK" -v targets="$LOGIN_TARGETS" '
      function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        if (n == 0) return 0
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
      }
      {
        k = $2
        tps[k] = tps[k] " " sprintf("%.0f", $3); xacts[k] += $4; failed[k] += $5; aborted[k] += $6; cpu[k] += $7; q[k] += $8
      }
      END {
        printf "%-14s %11s %6s %13s %12s %7s %8s  %s\n", "target", "median tps", "ratio", "CPU us/login", "auth queries", "failed", "aborted", "tps per round"
        nt = split(targets, ts, " ")
        base = median(tps["pgbouncer"])
        for (j = 1; j <= nt; j++) {
          k = ts[j]
          m = median(tps[k])
          ratio = base > 0 ? sprintf("%.2f", m / base) : "-"
          us = (k == "direct") ? "-" : (xacts[k] > 0 ? sprintf("%.1f", cpu[k] / clk * 1e6 / xacts[k]) : "-")
          printf "%-14s %11.0f %6s %13s %12d %7d %8d %s\n", k, m, ratio, us, q[k], failed[k], aborted[k], tps[k]
        }
      }' "$WORK/login.tsv"
  fi
  if [ -s "$WORK/idle.tsv" ]; then
    echo
    echo "memory per idle logged-in client, bytes: RSS growth (summed over the pooler's processes)"
    echo "over COUNT clients opened after $IDLE_WARM warm-up clients (in parentheses: growth from"
    echo "the fresh start / all clients):"
    [ -n "$IDLE_NOTE" ] && printf '%s' "$IDLE_NOTE" | sed 's/^/  /'
    awk -F '\t' '{ k = $1 " " $5; v[k] = v[k] sprintf("  %s %s (%s)", ($2 == "require" ? "TLS" : "plain"), $3, $4) }
      END { for (k in v) { split(k, a, " "); printf "  %-14s %7d clients%s\n", a[1], a[2], v[k] } }' \
      "$WORK/idle.tsv" | sort
  fi
  echo
  echo "failed: pgbench's \"number of failed transactions\", summed over rounds;"
  echo "aborted: clients pgbench aborted on an error, summed over rounds (their"
  echo "transactions are missing from tps). CPU us/xact: the proxy process's"
  echo "utime+stime over all rounds / transactions, with $CLK ticks a second."
  echo "PgBouncer 1.18 cannot remap prepared statements in transaction mode: its"
  echo "-M prepared rows are expected to show errors (a statement prepared on one"
  echo "server connection is missing on the next), reported here, not hidden. Some"
  echo "runs pass by luck: every pgbench client uses the same statement names for"
  echo "the same text, so once each server connection has prepared them, lookups"
  echo "on any server succeed. Real applications are not that lucky."
  echo "pgbench, PostgreSQL and the proxy share this machine's $(nproc) CPUs."
  [ "$TLS" = 1 ] && echo "TLS rows: pgbench sslmode=require to the proxy (or to PostgreSQL for direct),"
  [ "$TLS" = 1 ] && echo "ECDSA P-256 certificate; proxies talk to PostgreSQL in plain text. churn: pgbench -C."
} | tee "$OUT"
say "saved to $OUT"
