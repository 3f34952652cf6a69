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
import sys
import threading

import psycopg2

from common import CLIENTS, DEFAULT_PATH, MARK, ROUNDS, SHOW, TABLE, Check, marker, report, schema

SQL_PREPARE = "--sql-prepare" in sys.argv[1:]
NAME = "psycopg2" + (" (SQL PREPARE/EXECUTE)" if SQL_PREPARE else "")

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
    report(NAME, psycopg2.__version__.split()[0], errors, [chk for _, chk in results])


if __name__ == "__main__":
    main()
