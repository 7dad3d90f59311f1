#!/bin/sh
# Opt-in TLS checks that need PostgreSQL 17's libpq and server (`make check-tls17`):
# Debian 12 has PostgreSQL 15 only, so they run PostgreSQL 17, psql 17 and libpq 17
# from a throwaway Debian root (contrib/newer-debian.sh; made on first use, a few
# minutes). `make check` does not need this.
#
#   1. psql 17 with sslnegotiation=direct (a TLS ClientHello with ALPN postgresql
#      first, no SSLRequest) logs in through pgsluice, and pgsluice shows the session
#      as TLS.
#   2. psql 17 with channel_binding=require (SCRAM-SHA-256-PLUS) logs in through
#      pgsluice with a SCRAM secret; over plain text the same is refused.
#   3. pgsluice's server connections to PostgreSQL 17 with server_tls_direct = on use
#      TLS (pg_stat_ssl), with server_tls_sslmode = verify-full against the test CA.
#   4. Direct TLS to a pgsluice whose client_tls_sslmode = disable is refused.
#
# Prints one line per check and "N passed, N failed"; exits non-zero on a failure.
# Needs root. Environment: PGSLUICE_BIN (default ./pgsluice), NEWER_ROOT, NEWER_SUITE.
set -u

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SLUICE=${PGSLUICE_BIN:-$ROOT/pgsluice}
NEWER="sh $ROOT/contrib/newer-debian.sh"
PG17=/usr/lib/postgresql/17/bin
pass=0
fail=0

say() { echo "check-tls17: $*" >&2; }
check() { # NAME COMMAND...: passes when COMMAND exits 0
  name=$1
  shift
  if "$@" >"$WORK/check.out" 2>&1; then
    pass=$((pass + 1))
    echo "ok   $name"
  else
    fail=$((fail + 1))
    echo "FAIL $name"
    sed 's/^/     /' "$WORK/check.out" | tail -n 8
  fi
}

[ "$(id -u)" -eq 0 ] || { say "needs root"; exit 2; }
[ -x "$SLUICE" ] || { say "$SLUICE not found (make pgsluice)"; exit 2; }
$NEWER ensure >/dev/null || exit 2

WORK=$(mktemp -d /tmp/pgsluice-tls17.XXXXXX)
chown postgres: "$WORK"
PGPORT=""
cleanup() {
  [ -f "$WORK/sluice.pid" ] && kill "$(cat "$WORK/sluice.pid")" 2>/dev/null
  [ -f "$WORK/sluice2.pid" ] && kill "$(cat "$WORK/sluice2.pid")" 2>/dev/null
  [ -d "$WORK/data" ] && $NEWER runpg "$PG17/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

free_port() {
  p=$1
  while ss -ltn 2>/dev/null | awk '{print $4}' | grep -q ":$p\$"; do p=$((p + 1)); done
  echo "$p"
}
PGPORT=$(free_port 36100)
SPORT=$(free_port $((PGPORT + 1)))
S2PORT=$(free_port $((SPORT + 1)))

# A test CA and one certificate for localhost/127.0.0.1, used by PostgreSQL and pgsluice.
(
  cd "$WORK" || exit 1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=pgsluice-test-ca -keyout ca.key -out ca.crt &&
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
      -keyout server.key -out server.csr &&
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext &&
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile san.ext -out server.crt
) >"$WORK/openssl.log" 2>&1 || { cat "$WORK/openssl.log" >&2; exit 2; }
chmod 600 "$WORK"/*.key
chown postgres: "$WORK"/*

say "PostgreSQL 17 on 127.0.0.1:$PGPORT, pgsluice on $SPORT and $S2PORT ($WORK)"
$NEWER runpg sh -c "$PG17/initdb -D $WORK/data -U postgres -A trust >$WORK/initdb.log 2>&1" ||
  { cat "$WORK/initdb.log" >&2; exit 2; }
cat >>"$WORK/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$WORK'
ssl = on
ssl_cert_file = '$WORK/server.crt'
ssl_key_file = '$WORK/server.key'
password_encryption = 'scram-sha-256'
EOF
cat >"$WORK/data/pg_hba.conf" <<EOF
local all all trust
hostssl all postgres 127.0.0.1/32 trust
hostssl all all 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 reject
EOF
$NEWER runpg "$PG17/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null ||
  { tail -n 20 "$WORK/pg.log" >&2; exit 2; }
$NEWER runpg "$PG17/psql" -X -q -h "$WORK" -p "$PGPORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
  -c "CREATE ROLE scramuser LOGIN PASSWORD 'scrampass'" -c "CREATE DATABASE testdb OWNER scramuser" ||
  exit 2
SECRET=$($NEWER runpg "$PG17/psql" -X -At -h "$WORK" -p "$PGPORT" -U postgres -d postgres \
  -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'scramuser'")
(umask 077 && printf '"scramuser" "%s"\n"plainuser" "plainpass"\n' "$SECRET" >"$WORK/userlist.txt")

# start_sluice NAME PORT EXTRA: pgsluice with client TLS on the test certificate.
start_sluice() {
  cat >"$WORK/$1.ini" <<EOF
[databases]
testdb = host=127.0.0.1 port=$PGPORT dbname=testdb user=scramuser

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $2
unix_socket_dir = $WORK
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
logfile = $WORK/$1.log
pidfile = $WORK/$1.pid
admin_users = scramuser
server_tls_ca_file = $WORK/ca.crt
$3
EOF
  "$SLUICE" -d "$WORK/$1.ini" >"$WORK/$1.out" 2>&1
  i=0
  until [ -s "$WORK/$1.pid" ] && ss -ltn | awk '{print $4}' | grep -q ":$2\$"; do
    i=$((i + 1))
    [ $i -gt 100 ] && { cat "$WORK/$1.out" "$WORK/$1.log" >&2; return 1; }
    sleep 0.1
  done
}
start_sluice sluice "$SPORT" "client_tls_sslmode = require
client_tls_key_file = $WORK/server.key
client_tls_cert_file = $WORK/server.crt
client_tls_ca_file = $WORK/ca.crt
server_tls_sslmode = verify-full
server_tls_direct = 1" || { fail=$((fail + 1)); echo "FAIL pgsluice starts"; }
start_sluice sluice2 "$S2PORT" "client_tls_sslmode = disable
server_tls_sslmode = require" || { fail=$((fail + 1)); echo "FAIL pgsluice (no client TLS) starts"; }

psql17() { # CONNINFO SQL
  PGPASSWORD=scrampass $NEWER run "$PG17/psql" -X -At -d "$1" -c "$2"
}

direct_login() {
  out=$(psql17 "host=127.0.0.1 port=$SPORT user=scramuser dbname=testdb sslmode=verify-full \
sslrootcert=$WORK/ca.crt sslnegotiation=direct" "select 40 + 2") || return 1
  [ "$out" = 42 ]
}
check "psql 17 sslnegotiation=direct logs in through pgsluice" direct_login

tls_column() {
  out=$(psql17 "host=127.0.0.1 port=$SPORT user=scramuser dbname=pgbouncer sslmode=require \
sslnegotiation=direct" "SHOW CLIENTS") || return 1
  echo "$out"
  echo "$out" | grep -q "TLSv1"
}
check "SHOW CLIENTS shows the direct-TLS session's TLS version" tls_column

channel_binding() {
  out=$(psql17 "host=127.0.0.1 port=$SPORT user=scramuser dbname=testdb sslmode=require \
channel_binding=require" "select 'bound'") || return 1
  [ "$out" = bound ]
}
check "channel_binding=require (SCRAM-SHA-256-PLUS) through pgsluice" channel_binding

binding_refused_plain() {
  ! psql17 "host=127.0.0.1 port=$S2PORT user=scramuser dbname=testdb sslmode=disable \
channel_binding=require" "select 1"
}
check "channel_binding=require over plain text is refused" binding_refused_plain

server_direct() {
  out=$($NEWER runpg "$PG17/psql" -X -At -h "$WORK" -p "$PGPORT" -U postgres -d postgres -c \
    "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
     WHERE a.usename = 'scramuser' AND a.client_addr IS NOT NULL AND s.ssl") || return 1
  echo "TLS server connections of scramuser: $out"
  [ "$out" -ge 1 ]
}
check "server_tls_direct = on: pgsluice's server connections to PostgreSQL 17 use TLS" server_direct

direct_refused() {
  ! psql17 "host=127.0.0.1 port=$S2PORT user=scramuser dbname=testdb sslmode=require \
sslnegotiation=direct" "select 1"
}
check "direct TLS to a pgsluice with client_tls_sslmode = disable is refused" direct_refused

plain_server_login() {
  out=$(psql17 "host=127.0.0.1 port=$S2PORT user=scramuser dbname=testdb sslmode=disable" \
    "select 7") || return 1
  [ "$out" = 7 ]
}
check "server_tls_sslmode = require (SSLRequest) to PostgreSQL 17" plain_server_login

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
