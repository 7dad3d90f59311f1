#!/bin/sh
# A throwaway Debian root of a newer suite (default trixie) for opt-in tests and
# benchmarks that need newer PostgreSQL or clients than Debian 12 has (PostgreSQL 17
# and its libpq/psql, for direct TLS and channel binding). Made with debootstrap from
# Debian's own archive and kept for the next run; `make check` never needs it.
#
# Usage: sh contrib/newer-debian.sh ensure        make the root if missing, print its path
#        sh contrib/newer-debian.sh run CMD...    run CMD inside it (as root, /proc, /dev,
#                                                 /dev/shm and the host's /tmp mounted
#                                                 for the duration)
#        sh contrib/newer-debian.sh runpg CMD...  the same as the host's postgres user
#                                                 (uid/gid of this machine, not the root's)
#        sh contrib/newer-debian.sh remove        delete it
#
# Environment: NEWER_ROOT (default /var/tmp/pgsluice-newer/<suite>), NEWER_SUITE
# (default trixie), NEWER_MIRROR (default Debian's main archive), NEWER_PACKAGES (the
# packages installed in it; default PostgreSQL 17's server, client, libpq, python3 with
# psycopg and openssl). A root kept from an earlier run gets the packages it lacks, so
# one suite's root can serve several callers (contrib/bench.sh's BENCH_PEERS=1 asks a
# forky root for pgbouncer and odyssey). Needs root.
set -eu

SUITE=${NEWER_SUITE:-trixie}
ROOTDIR=${NEWER_ROOT:-/var/tmp/pgsluice-newer/$SUITE}
MIRROR=${NEWER_MIRROR:-http://deb.debian.org/debian}
DEFAULT_PACKAGES="postgresql-17 postgresql-client-17 libpq5 python3 python3-psycopg openssl"
PACKAGES=${NEWER_PACKAGES:-$DEFAULT_PACKAGES}
READY=$ROOTDIR/.pgsluice-ready

say() { echo "newer-debian: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap and chroot)"

# The packages installed in the root, one a line, from its ready mark (an empty mark,
# made by an older version of this script, stands for the default list).
installed() {
  if [ -s "$READY" ]; then cat "$READY"; elif [ -f "$READY" ]; then printf '%s\n' $DEFAULT_PACKAGES; fi
}
have_packages() {
  for p in $PACKAGES; do installed | grep -qx -- "$p" || return 1; done
}

ensure() {
  if have_packages; then
    echo "$ROOTDIR"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 ||
    { say "installing debootstrap"; apt-get install -y -q debootstrap >/dev/null; }
  if [ ! -x "$ROOTDIR/bin/sh" ]; then
    say "debootstrap $SUITE into $ROOTDIR (a few minutes)"
    mkdir -p "$(dirname "$ROOTDIR")"
    # Debian 12's debootstrap has no script for suites named after it (forky): every
    # later Debian suite is made like sid.
    script=/usr/share/debootstrap/scripts/$SUITE
    [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTDIR" "$MIRROR" "$script" \
      >"$ROOTDIR.log" 2>&1 || { tail -n 20 "$ROOTDIR.log" >&2; rm -rf "$ROOTDIR"; die "debootstrap of $SUITE from $MIRROR failed (log: $ROOTDIR.log)"; }
  fi
  # No service starts inside, and no default cluster is created by the packages.
  printf '#!/bin/sh\nexit 101\n' >"$ROOTDIR/usr/sbin/policy-rc.d"
  chmod 755 "$ROOTDIR/usr/sbin/policy-rc.d"
  mkdir -p "$ROOTDIR/etc/postgresql-common"
  echo "create_main_cluster = false" >"$ROOTDIR/etc/postgresql-common/createcluster.conf"
  say "installing $PACKAGES"
  # Signatures are checked as always; the Release file's Valid-Until is not, since a
  # testing suite's expires within days and the archive this machine reaches may be a
  # copy older than that (apt then refuses it: "Release file ... is expired").
  # Some maintainer scripts (systemd-tmpfiles, from postgresql-common) need /proc.
  proc_mounted=0
  if ! mountpoint -q "$ROOTDIR/proc"; then
    mount -t proc proc "$ROOTDIR/proc" && proc_mounted=1
  fi
  apt_rc=0
  chroot "$ROOTDIR" sh -c "apt-get update -q -o Acquire::Check-Valid-Until=false &&
    DEBIAN_FRONTEND=noninteractive dpkg --configure -a &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES" \
    >"$ROOTDIR.apt.log" 2>&1 || apt_rc=$?
  [ "$proc_mounted" = 0 ] || umount -l "$ROOTDIR/proc" 2>/dev/null || true
  [ "$apt_rc" = 0 ] ||
    { tail -n 20 "$ROOTDIR.apt.log" >&2; die "apt-get in the $SUITE root could not install: $PACKAGES"; }
  { installed; printf '%s\n' $PACKAGES; } | sort -u >"$READY.new"
  mv "$READY.new" "$READY"
  echo "$ROOTDIR"
}

# The root's postgres user gets this machine's postgres uid and gid, so files made on
# either side (certificates, data folders under /tmp) belong to the same user.
align_postgres_ids() {
  uid=$(id -u postgres) gid=$(id -g postgres)
  [ "$(chroot "$ROOTDIR" id -u postgres)" = "$uid" ] &&
    [ "$(chroot "$ROOTDIR" id -g postgres)" = "$gid" ] && return 0
  chroot "$ROOTDIR" groupmod -o -g "$gid" postgres
  chroot "$ROOTDIR" usermod -o -u "$uid" -g "$gid" postgres
}

run() {
  userspec=$1
  shift
  ensure >/dev/null
  align_postgres_ids
  mounted=""
  cleanup() {
    for m in $mounted; do umount -l "$ROOTDIR$m" 2>/dev/null || true; done
  }
  trap cleanup EXIT
  # A signal ends the shell through its EXIT trap, so the mounts go with it.
  trap 'exit 1' INT TERM HUP
  for m in /proc /dev /dev/shm /tmp; do
    mkdir -p "$ROOTDIR$m"
    if ! mountpoint -q "$ROOTDIR$m"; then
      case "$m" in
        /proc) mount -t proc proc "$ROOTDIR/proc" ;;
        *) mount --bind "$m" "$ROOTDIR$m" ;;
      esac
      mounted="$m $mounted"
    fi
  done
  if [ -n "$userspec" ]; then
    chroot --userspec="$userspec" "$ROOTDIR" env HOME=/tmp "$@"
  else
    chroot "$ROOTDIR" "$@"
  fi
}

case "${1:-}" in
  ensure) ensure ;;
  run) shift; run "" "$@" ;;
  runpg) shift; run "$(id -u postgres):$(id -g postgres)" "$@" ;;
  remove) rm -rf "$ROOTDIR" "$ROOTDIR.log" "$ROOTDIR.apt.log" ;;
  *) die "usage: $0 ensure | run CMD... | runpg CMD... | remove" ;;
esac
