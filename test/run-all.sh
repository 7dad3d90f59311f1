#!/bin/sh
# Runs every test suite of a build folder and prints one closing line with the totals.
#
# Usage: sh test/run-all.sh BUILD_DIR
#
# Order: BUILD/unit_tests, then each BUILD/fuzz/fuzz_* corpus replay program with
# test/fuzz/corpus/<name>/, then BUILD/integration_tests. Each suite's output is
# shown as it runs and kept in BUILD/test-logs/<suite>.log. doctest suites count
# their test cases; a replay program counts as one test. A suite that is missing,
# crashes, times out or prints no doctest summary counts as one failure.
#
# Environment: RUN_ALL_TIMEOUT  seconds one suite may take (default 1800).
#
# The last line is "N passed, N failed"; the exit status is non-zero if any failed.
set -u

if [ $# -ne 1 ]; then
  echo "usage: sh test/run-all.sh BUILD_DIR" >&2
  exit 2
fi
BUILD=${1%/}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOGDIR="$BUILD/test-logs"
TIMEOUT=${RUN_ALL_TIMEOUT:-1800}
mkdir -p "$LOGDIR" || exit 2

total_pass=0
total_fail=0

# run_suite NAME KIND CMD...   KIND is "doctest" or "replay".
# Runs CMD with its output shown and logged, then adds its counts to the totals.
run_suite() {
  name=$1 kind=$2
  shift 2
  log="$LOGDIR/$name.log"
  rcfile="$LOGDIR/$name.rc"
  echo "=== $name: $*"
  if [ ! -x "$1" ]; then
    echo "$1: not found or not executable" | tee "$log"
    echo "--- $name: missing, counted as 1 failure"
    total_fail=$((total_fail + 1))
    return
  fi
  rm -f "$rcfile"
  # The exit status of the suite (not of tee) is written to rcfile.
  { timeout -k 10 "$TIMEOUT" "$@" 2>&1; echo $? >"$rcfile"; } | tee "$log"
  rc=$(cat "$rcfile" 2>/dev/null || echo 255)
  if [ "$kind" = replay ]; then
    if [ "$rc" -eq 0 ]; then p=1 f=0; else p=0 f=1; fi
  else
    # "[doctest] test cases: 12 | 11 passed | 1 failed | 0 skipped" (colours stripped).
    summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" |
      sed -n 's/^\[doctest\] test cases: *[0-9][0-9]* *| *\([0-9][0-9]*\) passed *| *\([0-9][0-9]*\) failed.*/\1 \2/p' |
      tail -n 1)
    if [ -z "$summary" ]; then
      p=0 f=1
      echo "--- $name: no doctest summary (exit $rc), counted as 1 failure"
    else
      p=${summary% *} f=${summary#* }
      # A suite that reports no failure but still exits non-zero (a crash in a
      # destructor, a sanitizer report at exit) has failed all the same.
      if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
        echo "--- $name: exit status $rc with no failed test case, counted as 1 failure"
      fi
    fi
  fi
  [ "$rc" -eq 124 ] && echo "--- $name: timed out after ${TIMEOUT}s"
  echo "--- $name: passed $p, failed $f (exit $rc)"
  total_pass=$((total_pass + p))
  total_fail=$((total_fail + f))
}

run_suite unit_tests doctest "$BUILD/unit_tests"

for prog in "$BUILD"/fuzz/fuzz_*; do
  [ -f "$prog" ] || continue
  case "$prog" in *.o|*.d) continue ;; esac
  name=$(basename "$prog")
  corpus="$ROOT/test/fuzz/corpus/$name"
  if [ -d "$corpus" ]; then
    run_suite "$name" replay "$prog" "$corpus"
  else
    echo "(no corpus folder test/fuzz/corpus/$name/)"
    run_suite "$name" replay "$prog"
  fi
done

run_suite integration_tests doctest "$BUILD/integration_tests"

# STYLE.md: the tree is clang-formatted; a formatting drift fails CI like a test.
run_suite clang_format replay /bin/sh -c "cd '$ROOT' && clang-format --dry-run -Werror src/*.cc src/*.h test/*/*.cc test/*/*.h"

echo "$total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
