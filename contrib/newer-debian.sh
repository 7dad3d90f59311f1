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
# (default trixie), NEWER_MIRROR (default Debian's main archive). Needs root.
set -eu

SUITE=${NEWER_SUITE:-trixie}
ROOTDIR=${NEWER_ROOT:-/var/tmp/pgsluice-newer/$SUITE}
MIRROR=${NEWER_MIRROR:-http://deb.debian.org/debian}
PACKAGES="postgresql-17 postgresql-client-17 libpq5 python3 python3-psycopg openssl"

say() { echo "newer-debian: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap and chroot)"

ensure() {
  if [ -f "$ROOTDIR/.pgsluice-ready" ]; then
    echo "$ROOTDIR"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 ||
    { say "installing debootstrap"; apt-get install -y -q debootstrap >/dev/null; }
  if [ ! -x "$ROOTDIR/bin/sh" ]; then
    say "debootstrap $SUITE into $ROOTDIR (a few minutes)"
    mkdir -p "$(dirname "$ROOTDIR")"
    debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$ROOTDIR" "$MIRROR" \
      >"$ROOTDIR.log" 2>&1 || { tail -n 20 "$ROOTDIR.log" >&2; die "debootstrap failed"; }
  fi
  # No service starts inside, and no default cluster is created by the packages.
  printf '#!/bin/sh\nexit 101\n' >"$ROOTDIR/usr/sbin/policy-rc.d"
  chmod 755 "$ROOTDIR/usr/sbin/policy-rc.d"
  mkdir -p "$ROOTDIR/etc/postgresql-common"
  echo "create_main_cluster = false" >"$ROOTDIR/etc/postgresql-common/createcluster.conf"
  say "installing $PACKAGES"
  chroot "$ROOTDIR" sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends $PACKAGES" >"$ROOTDIR.apt.log" 2>&1 ||
    { tail -n 20 "$ROOTDIR.apt.log" >&2; die "apt-get in the root failed"; }
  touch "$ROOTDIR/.pgsluice-ready"
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
