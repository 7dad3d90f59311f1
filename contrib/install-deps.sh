#!/bin/sh
# Installs the Debian 12 packages pgsluice needs to build, test, demo and benchmark,
# but only those that are missing. Quiet when everything is already there.
#
# Usage: sh contrib/install-deps.sh        (as root, or as a user with sudo)
#
# Installing postgresql-15 and pgbouncer may start their system services on ports
# 5432 and 6432; this script stops and disables them afterwards, because the tests,
# the demo and the benchmark start their own throwaway servers.
set -u

PACKAGES="g++ make pkg-config libevent-dev libssl-dev libsqlite3-dev libinih-dev python3-psycopg
doctest-dev libpq-dev postgresql-15 postgresql-client-15 pgbouncer clang-14 clang-format
libclang-rt-14-dev"

missing=""
for p in $PACKAGES; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$status" in
    *" ok installed") ;;
    *) missing="$missing $p" ;;
  esac
done

[ -z "$missing" ] && exit 0

echo "install-deps: installing:$missing"

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-deps: these packages are missing:$missing" >&2
  echo "install-deps: run this script as root, or install sudo, or install them by hand:" >&2
  echo "  apt-get install$missing" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# sudo drops the environment by default: pass the variable on its command line.
APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get"

if ! $APT update -q; then
  echo "install-deps: apt-get update failed" >&2
  exit 1
fi
# shellcheck disable=SC2086
if ! $APT install -y -q --no-install-recommends $missing; then
  echo "install-deps: apt-get install failed for:$missing" >&2
  exit 1
fi

# Stop and disable the system services the packages may have started, so the
# tests and the demo own their ports. Any of these may be absent: ignore errors.
case "$missing" in
  *postgresql*|*pgbouncer*)
    for svc in pgbouncer postgresql; do
      if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
      else
        if command -v service >/dev/null 2>&1; then
          $SUDO service "$svc" stop >/dev/null 2>&1 || true
        elif [ -x "/etc/init.d/$svc" ]; then
          $SUDO "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1; then
          $SUDO update-rc.d "$svc" disable >/dev/null 2>&1 || true
        fi
      fi
    done
    # A cluster left running by the postgresql-common hooks without an init system.
    if command -v pg_lsclusters >/dev/null 2>&1; then
      pg_lsclusters -h 2>/dev/null | while read -r ver name _port status _rest; do
        case "$status" in
          online*) $SUDO pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true ;;
        esac
      done
    fi
    ;;
esac

# Confirm everything is now installed.
for p in $missing; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$status" in
    *" ok installed") ;;
    *) echo "install-deps: $p is still not installed" >&2; exit 1 ;;
  esac
done
echo "install-deps: done"
