"""psycopg 3 through pgsluice (transaction pooling) while its backend is terminated:
the connection survives, the error is PostgreSQL's, the transaction is aborted until
rolled back, prepared statements and pipelines keep working.
Arguments: pgsluice conninfo, superuser conninfo straight to PostgreSQL."""
import sys
import threading
import time

import psycopg
from psycopg import errors
from psycopg.pq import TransactionStatus

pooled, su = sys.argv[1], sys.argv[2]


def kill(pid, delay=0.0):
    time.sleep(delay)
    with psycopg.connect(su, autocommit=True) as s:
        s.execute("select pg_terminate_backend(%s)", (pid,))
        for _ in range(200):
            n = s.execute("select count(*) from pg_stat_activity where pid = %s", (pid,)).fetchone()[0]
            if n == 0:
                return
            time.sleep(0.05)
    raise AssertionError("backend %s did not go" % pid)


def expect(exc, fn):
    try:
        fn()
    except exc:
        return
    raise AssertionError("expected %s" % exc.__name__)


with psycopg.connect(pooled) as c:
    # Idle in a transaction.
    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    kill(pid)
    expect(errors.AdminShutdown, lambda: c.execute("select 1"))
    assert c.info.transaction_status == TransactionStatus.INERROR
    expect(errors.InFailedSqlTransaction, lambda: c.execute("select 1"))
    c.rollback()
    assert c.execute("select 42").fetchone()[0] == 42
    assert c.execute("select pg_backend_pid()").fetchone()[0] != pid
    c.commit()

    # COMMIT of a lost transaction fails: it is never reported as committed.
    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    kill(pid)
    expect(errors.AdminShutdown, c.commit)
    c.rollback()

    # A server-side prepared statement survives the loss.
    for i in range(3):
        assert c.execute("select %s::int + 1", (i,), prepare=True).fetchone()[0] == i + 1
    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    kill(pid)
    expect(errors.AdminShutdown, lambda: c.execute("select %s::int + 1", (7,), prepare=True))
    c.rollback()
    assert c.execute("select %s::int + 1", (9,), prepare=True).fetchone()[0] == 10
    c.commit()

    # A query in flight in autocommit, and a pipeline.
    c.autocommit = True
    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    t = threading.Thread(target=kill, args=(pid, 0.5))
    t.start()
    expect(errors.AdminShutdown, lambda: c.execute("select pg_sleep(30)"))
    t.join()
    assert c.info.transaction_status == TransactionStatus.IDLE
    assert c.execute("select 5").fetchone()[0] == 5

    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    t = threading.Thread(target=kill, args=(pid, 0.5))
    t.start()

    def pipeline():
        with c.pipeline():
            c.execute("select pg_sleep(30)")
            c.execute("select 2")

    expect(psycopg.Error, pipeline)
    t.join()
    assert c.execute("select 6").fetchone()[0] == 6
    with c.pipeline():
        cur = c.execute("select 7")
        cur2 = c.execute("select 8")
    assert cur.fetchone()[0] == 7 and cur2.fetchone()[0] == 8

print("all checks passed")
