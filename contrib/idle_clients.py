#!/usr/bin/python3
"""Opens N idle, logged-in client connections to a pooler and holds them.

Usage: idle_clients.py PORT N SSLMODE USER PASSWORD DBNAME

Connects N clients with libpq (psycopg), each running one `select 1` so that it is
fully logged in, prints "ready N" on stdout once all are open, then waits until
stdin is closed and exits (closing them). Exits 1 with a message if a connection
fails. Used by contrib/bench.sh to measure memory per idle client (RSS growth of
the pooler between before and after).
"""
import resource
import sys

import psycopg


def main():
    port, n, sslmode, user, password, db = sys.argv[1:7]
    n = int(n)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, n + 256) if hard != resource.RLIM_INFINITY else n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    conns = []
    for i in range(n):
        try:
            c = psycopg.connect(host="127.0.0.1", port=port, user=user, password=password,
                                dbname=db, sslmode=sslmode, autocommit=True)
            c.execute("select 1")
        except Exception as e:  # report which one and why
            print(f"connection {i + 1} of {n} failed: {e}", file=sys.stderr)
            return 1
        conns.append(c)
    print(f"ready {n}", flush=True)
    sys.stdin.read()
    for c in conns:
        c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
