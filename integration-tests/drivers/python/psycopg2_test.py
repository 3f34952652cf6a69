#!/usr/bin/env python3
"""psycopg2 workload for Shardgate's driver matrix (integration-tests/tests/drivers.rs).

Connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; DRIVER_TABLE is the prefix of every
object it creates. psycopg2 binds parameters client-side and sends simple-protocol queries, so by
default this exercises parameterized queries, executemany, explicit BEGIN/COMMIT, psycopg2's own
transaction handling (autocommit off + commit()) and autocommit. With `--sql-prepare` the same
INSERT/SELECTs go through SQL-level `PREPARE name AS ...` once per client and `EXECUTE name(...)`
in every later transaction (what psycopg2 users do to get server-side prepared statements).

Each of 20 concurrent clients sets its own search_path to a schema holding a table `marker`
with the client's id, then checks counts/sums, `marker` and `SHOW search_path` across many
transactions. Exits 1 with every failure listed.
"""
import os
import sys
import threading

import psycopg2

PREFIX = os.environ["DRIVER_TABLE"]
CLIENTS = int(os.environ.get("DRIVER_CLIENTS", "20"))
ROUNDS = int(os.environ.get("DRIVER_ROUNDS", "8"))
SQL_PREPARE = "--sql-prepare" in sys.argv[1:]
NAME = "psycopg2" + (" (SQL PREPARE/EXECUTE)" if SQL_PREPARE else "")
DEFAULT_PATH = '"$user", public'
TABLE = f"public.{PREFIX}_items"

if SQL_PREPARE:
    PREPARES = [
        f"PREPARE ins (int, int, bigint) AS INSERT INTO {TABLE} (client, round, v) VALUES ($1, $2, $3)",
        f"PREPARE sel (int) AS SELECT count(*), sum(v) FROM {TABLE} WHERE client = $1",
        "PREPARE mark AS SELECT v, pg_backend_pid() FROM marker",
    ]
    INS = "EXECUTE ins (%s, %s, %s)"
    SEL = "EXECUTE sel (%s)"
    MARK = "EXECUTE mark"
else:
    PREPARES = []
    INS = f"INSERT INTO {TABLE} (client, round, v) VALUES (%s, %s, %s)"
    SEL = f"SELECT count(*), sum(v) FROM {TABLE} WHERE client = %s"
    MARK = "SELECT v, pg_backend_pid() FROM marker"
SHOW = "SHOW search_path"


def schema(i):
    return f"{PREFIX}_s{i}"


def marker(i):
    return f"{PREFIX}-client-{i}"


def connect():
    c = psycopg2.connect("connect_timeout=10")
    c.autocommit = True
    return c


def one(cur, sql, args=None):
    cur.execute(sql, args)
    return cur.fetchone()


def setup():
    c = connect()
    with c.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        cur.execute(f"CREATE TABLE {TABLE} (client int NOT NULL, round int NOT NULL, v bigint NOT NULL)")
        for i in range(CLIENTS):
            cur.execute(f"DROP SCHEMA IF EXISTS {schema(i)} CASCADE")
            cur.execute(f"CREATE SCHEMA {schema(i)}")
            cur.execute(f"CREATE TABLE {schema(i)}.marker (v text)")
            cur.execute(f"INSERT INTO {schema(i)}.marker VALUES (%s)", (marker(i),))
    c.close()


class Check:
    def __init__(self, i):
        self.i = i
        self.count = 0
        self.sum = 0
        self.pids = set()

    def inserted(self, v):
        self.count += 1
        self.sum += v

    def totals(self, row):
        got = (row[0], int(row[1] or 0))
        if got != (self.count, self.sum):
            raise AssertionError(f"count/sum {got}, expected {(self.count, self.sum)}")

    def marker(self, row):
        if row is None or row[0] != marker(self.i):
            raise AssertionError(
                f"SELECT v FROM marker gave {row!r}, expected {marker(self.i)!r} "
                "(another client's search_path, or ours lost)"
            )
        self.pids.add(row[1])

    def path(self, row, expected):
        if row is None or row[0] != expected:
            raise AssertionError(f"SHOW search_path gave {row!r}, expected {expected!r}")


def client(i, results, start):
    chk = Check(i)
    where = "connect"
    c = None
    try:
        c = connect()
        cur = c.cursor()
        start.wait()
        where = "before SET"
        chk.path(one(cur, SHOW), DEFAULT_PATH)
        cur.execute(f"SET search_path TO {schema(i)}")
        where = "PREPARE"
        for p in PREPARES:
            cur.execute(p)
        for r in range(ROUNDS):
            vals = [i * 1000 + r * 10 + k for k in (1, 2, 3)]
            if r % 2 == 0:
                where = f"round {r} explicit BEGIN/COMMIT"
                cur.execute("BEGIN")
                for v in vals[:2]:
                    cur.execute(INS, (i, r, v))
                    chk.inserted(v)
                chk.totals(one(cur, SEL, (i,)))
                chk.marker(one(cur, MARK))
                cur.execute("COMMIT")
            else:
                where = f"round {r} autocommit off + commit()"
                c.autocommit = False
                cur.executemany(INS, [(i, r, v) for v in vals[:2]])
                for v in vals[:2]:
                    chk.inserted(v)
                chk.totals(one(cur, SEL, (i,)))
                chk.marker(one(cur, MARK))
                c.commit()
                c.autocommit = True
            where = f"round {r} autocommit"
            cur.execute(INS, (i, r, vals[2]))
            chk.inserted(vals[2])
            chk.totals(one(cur, SEL, (i,)))
            chk.marker(one(cur, MARK))
            chk.path(one(cur, SHOW), schema(i))
        where = "after RESET"
        cur.execute("RESET search_path")
        chk.path(one(cur, SHOW), DEFAULT_PATH)
        results[i] = (None, chk)
    except BaseException as e:  # noqa: BLE001 - every failure is reported
        kind = "" if isinstance(e, AssertionError) else f"{type(e).__name__}: "
        results[i] = (f"client {i}: {where}: {kind}{e}".strip(), chk)
    finally:
        if c is not None:
            c.close()


def main():
    setup()
    results = [None] * CLIENTS
    start = threading.Barrier(CLIENTS, timeout=60)
    threads = [threading.Thread(target=client, args=(i, results, start)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors = [err for err, _ in results if err]
    if not errors:
        c = connect()
        with c.cursor() as cur:
            cur.execute(f"SELECT client, count(*), sum(v) FROM {TABLE} GROUP BY client ORDER BY client")
            got = {r[0]: (r[1], int(r[2])) for r in cur.fetchall()}
        c.close()
        want = {i: (chk.count, chk.sum) for i, (_, chk) in enumerate(results)}
        if got != want:
            errors.append(f"final table contents per client {got}, expected {want}")
    if errors:
        print(f"{NAME}: {len(errors)} failure(s):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        sys.exit(1)
    pids = [len(chk.pids) for _, chk in results]
    print(
        f"{NAME} {psycopg2.__version__.split()[0]}: OK, {CLIENTS} clients x {ROUNDS} rounds; "
        f"server backends seen per client: min {min(pids)}, max {max(pids)}"
    )


if __name__ == "__main__":
    main()
