"""psycopg 3 sessions that issue 9 found broken through a transaction pooler (items 14
and 15). Run by test_psycopg.cc with two connection strings, the pooler's and PostgreSQL's
own; every check must give the same answer through both. Prints one line per check and
exits non-zero on the first difference from what PostgreSQL does."""
import sys
import tempfile

import psycopg
from psycopg import errors, pq


OUTCOMES = []


def check(name, cond):
    print(("ok   " if cond else "FAIL ") + name, flush=True)
    if not cond:
        sys.exit(1)


def outcome(name, fn):
    """Records what fn gives, or the SQLSTATE it raises: compared between the two targets."""
    try:
        got = "value " + str(fn())
    except psycopg.Error as e:
        got = "error " + str(e.sqlstate)
    print(f"     {name}: {got}", flush=True)
    OUTCOMES.append((name, got))


def deallocate_all(dsn, command):
    # Item 14: two clients prepare the same text; one drops all of its own statements.
    c1 = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
    c2 = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
    for c in (c1, c2):
        for _ in range(3):
            check(f"{command}: prepared select 1", c.execute("select 1", prepare=True).fetchone()[0] == 1)
    c1.execute(command)
    for _ in range(3):
        check(f"{command}: the other client's statement still runs",
              c2.execute("select 1", prepare=True).fetchone()[0] == 1)
        # psycopg 3.1 keeps its own cache after an explicit DEALLOCATE ALL, so PostgreSQL
        # itself answers 26000 here: whatever it answers, pgsluice must answer the same.
        outcome(f"{command}: the dropping client runs its statement again",
                lambda: c1.execute("select 1", prepare=True).fetchone()[0])
    c1.close()
    c2.close()


def pipeline_parse_error(dsn):
    # Item 15: in a pipeline a prepared statement fails at Parse; after the Sync the
    # statements are prepared again. Whatever PostgreSQL answers (psycopg 3.1 keeps some
    # names it believes prepared), pgsluice must answer the same.
    #
    # Which names psycopg 3.1 still believes prepared after the failed pipeline depends on
    # how the replies reach it (its result bookkeeping stops at the first error of a batch
    # it reads): the same script sends different messages against the same PostgreSQL
    # when the replies are split differently. So the messages psycopg sent are recorded
    # (libpq's trace, frontend lines only) and returned: outcomes are compared only
    # between targets to which psycopg sent the same messages (test_prepared.cc checks the
    # same protocol sequence byte for byte, without psycopg's timing).
    c = psycopg.connect(dsn, autocommit=True, prepare_threshold=0)
    c.execute("drop table if exists it_pp")
    trace = tempfile.TemporaryFile(mode="w+")
    c.pgconn.trace(trace.fileno())
    c.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def failing_pipeline():
        with c.pipeline() as p:
            c.execute("select 1", prepare=True)
            c.execute("select * from it_pp", prepare=True)  # no such table
            c.execute("select 2", prepare=True)
            p.sync()
        return "no error"

    def good_pipeline():
        with c.pipeline() as p:
            cur1 = c.execute("select 1", prepare=True)
            cur2 = c.execute("select 2", prepare=True)
            p.sync()
            return (cur1.fetchone()[0], cur2.fetchone()[0])

    for round_ in range(3):
        outcome(f"pipeline round {round_}: with a failing Parse", failing_pipeline)
        outcome(f"pipeline round {round_}: prepared again after the Sync", good_pipeline)
        outcome(f"pipeline round {round_}: outside a pipeline",
                lambda: c.execute("select 2", prepare=True).fetchone()[0])
    c.execute("create table it_pp (n int)")
    outcome("pipeline: the table now exists",
            lambda: c.execute("select count(*) from it_pp", prepare=True).fetchone()[0])
    c.execute("drop table it_pp")
    c.pgconn.untrace()
    c.close()
    trace.seek(0)
    return [line for line in trace.read().splitlines() if line.startswith("F")]


def main():
    runs = []
    for dsn in sys.argv[1:]:
        print("--- " + dsn.split(" password=")[0], flush=True)
        OUTCOMES.clear()
        deallocate_all(dsn, "DEALLOCATE ALL")
        deallocate_all(dsn, "DISCARD ALL")
        plain = list(OUTCOMES)
        OUTCOMES.clear()
        sent = pipeline_parse_error(dsn)
        runs.append((plain, list(OUTCOMES), sent))
    for plain, piped, sent in runs[1:]:
        check("the same outcomes as the first target", plain == runs[0][0])
        if sent == runs[0][2]:
            check("the same pipeline outcomes as the first target", piped == runs[0][1])
        else:
            print("     pipeline: psycopg sent other messages than to the first target "
                  "(its bookkeeping depends on how replies arrive): not compared", flush=True)
            check("the failing Parse fails the same way", piped[0] == runs[0][1][0])
    print("all checks passed")


main()
