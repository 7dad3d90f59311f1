#!/usr/bin/python3
"""Opens N idle, logged-in client connections to a pooler and holds them.

Usage: idle_clients.py PORT N SSLMODE USER PASSWORD DBNAME [HOSTS]

Connects N clients with libpq (psycopg), each running one `select 1` so that it is
fully logged in, prints "ready N" on stdout once all are open, then waits until
stdin is closed and exits (closing them). Exits 1 with a message if a connection
fails. psycopg 3.1 waits on its sockets with select(), which cannot take a
descriptor above 1023, so the clients are spread over child processes of at most
900 connections each. Used by contrib/bench.sh to measure memory per idle client
(RSS growth of the pooler between before and after).

HOSTS (default 127.0.0.1) is a comma-separated list of addresses the pooler listens
on; connection i goes to HOSTS[i % len(HOSTS)]. Linux gives each destination
address and port its own range of ephemeral source ports (about 28,000 by default),
so more than that many clients to one port need more than one address: the loopback
answers on all of 127.0.0.0/8.
"""
import os
import sys

import psycopg

PER_PROCESS = 900


def hold(hosts, first, port, n, sslmode, user, password, db, report_fd, release_fd):
    """Child: opens n connections, reports, waits for the release pipe to close."""
    conns = []
    for i in range(n):
        try:
            c = psycopg.connect(host=hosts[(first + i) % len(hosts)], port=port, user=user,
                                password=password, dbname=db, sslmode=sslmode, autocommit=True,
                                connect_timeout=20)
            c.execute("select 1")
        except Exception as e:  # report which one and why
            os.write(report_fd, f"fail connection {i + 1} of {n}: {e}\n".encode())
            os._exit(1)
        conns.append(c)
    os.write(report_fd, b"ok\n")
    os.read(release_fd, 1)  # returns at EOF: the parent is done
    for c in conns:
        c.close()
    os._exit(0)


def main():
    port, n, sslmode, user, password, db = sys.argv[1:7]
    n = int(n)
    hosts = (sys.argv[7] if len(sys.argv) > 7 else "127.0.0.1").split(",")
    report_r, report_w = os.pipe()
    release_r, release_w = os.pipe()
    children = []
    left = n
    while left > 0:
        k = min(left, PER_PROCESS)
        first = n - left
        left -= k
        pid = os.fork()
        if pid == 0:
            os.close(report_r)
            os.close(release_w)
            hold(hosts, first, port, k, sslmode, user, password, db, report_w, release_r)
        children.append(pid)
    os.close(report_w)
    os.close(release_r)
    reports = os.fdopen(report_r)
    ok = True
    for _ in children:
        line = reports.readline()
        if line != "ok\n":
            print(line.strip() or "a child exited early", file=sys.stderr)
            ok = False
            break
    if ok:
        print(f"ready {n}", flush=True)
        sys.stdin.read()
    os.close(release_w)
    for pid in children:
        os.waitpid(pid, 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
