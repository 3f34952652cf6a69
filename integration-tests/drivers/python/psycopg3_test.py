#!/usr/bin/env python3
"""psycopg 3 workload for Shardgate's driver matrix (integration-tests/tests/drivers.rs).

Connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; DRIVER_TABLE is the prefix of every
object it creates. prepare_threshold=0 makes psycopg prepare every statement server-side on its
first use (named `_pg3_N`) and reuse it afterwards; some rounds run in pipeline mode.

Each of 20 concurrent clients sets its own search_path to a schema holding a table `marker`
with the client's id, then over many transactions (explicit and autocommit) checks that its
prepared INSERTs/SELECTs give the right counts and sums and that `marker` and `SHOW search_path`
are its own. Exits 1 with every failure listed.
"""
import threading

import psycopg

from common import CLIENTS, DEFAULT_PATH, MARK, ROUNDS, SHOW, TABLE, Check, marker, report, schema

INS = f"INSERT INTO {TABLE} (client, round, v) VALUES (%s, %s, %s)"
SEL = f"SELECT count(*), sum(v) FROM {TABLE} WHERE client = %s"


def connect():
    return psycopg.connect("connect_timeout=10", autocommit=True, prepare_threshold=0)


def setup():
    with connect() as c:
        c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        c.execute(f"CREATE TABLE {TABLE} (client int NOT NULL, round int NOT NULL, v bigint NOT NULL)")
        for i in range(CLIENTS):
            c.execute(f"DROP SCHEMA IF EXISTS {schema(i)} CASCADE")
            c.execute(f"CREATE SCHEMA {schema(i)}")
            c.execute(f"CREATE TABLE {schema(i)}.marker (v text)")
            c.execute(f"INSERT INTO {schema(i)}.marker VALUES (%s)", (marker(i),))


def client(i, results, start):
    chk = Check(i)
    where = "connect"
    try:
        with connect() as c:
            start.wait()
            where = "before SET"
            chk.path(c.execute(SHOW).fetchone(), DEFAULT_PATH)
            c.execute(f"SET search_path TO {schema(i)}")
            for r in range(ROUNDS):
                vals = [i * 1000 + r * 10 + k for k in (1, 2, 3)]
                if r % 2 == 0:
                    where = f"round {r} explicit transaction"
                    with c.transaction():
                        for v in vals[:2]:
                            c.execute(INS, (i, r, v))
                            chk.inserted(v)
                        chk.totals(c.execute(SEL, (i,)).fetchone())
                        chk.marker(c.execute(MARK).fetchone())
                    where = f"round {r} autocommit"
                    c.execute(INS, (i, r, vals[2]))
                    chk.inserted(vals[2])
                    chk.totals(c.execute(SEL, (i,)).fetchone())
                    chk.marker(c.execute(MARK).fetchone())
                    chk.path(c.execute(SHOW).fetchone(), schema(i))
                else:
                    where = f"round {r} pipelined transaction"
                    with c.pipeline():
                        with c.transaction():
                            for v in vals[:2]:
                                c.execute(INS, (i, r, v))
                                chk.inserted(v)
                            sel = c.execute(SEL, (i,))
                            mark = c.execute(MARK)
                    chk.totals(sel.fetchone())
                    chk.marker(mark.fetchone())
                    where = f"round {r} pipelined autocommit"
                    with c.pipeline():
                        c.execute(INS, (i, r, vals[2]))
                        chk.inserted(vals[2])
                        sel = c.execute(SEL, (i,))
                        mark = c.execute(MARK)
                        show = c.execute(SHOW)
                    chk.totals(sel.fetchone())
                    chk.marker(mark.fetchone())
                    chk.path(show.fetchone(), schema(i))
            where = "after RESET"
            c.execute("RESET search_path")
            chk.path(c.execute(SHOW).fetchone(), DEFAULT_PATH)
        results[i] = (None, chk)
    except BaseException as e:  # noqa: BLE001 - every failure is reported
        kind = "" if isinstance(e, AssertionError) else f"{type(e).__name__}: "
        results[i] = (f"client {i}: {where}: {kind}{e}".strip(), chk)


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
        with connect() as c:
            rows = c.execute(
                f"SELECT client, count(*), sum(v) FROM {TABLE} GROUP BY client ORDER BY client"
            ).fetchall()
        got = {r[0]: (r[1], int(r[2])) for r in rows}
        want = {i: (chk.count, chk.sum) for i, (_, chk) in enumerate(results)}
        if got != want:
            errors.append(f"final table contents per client {got}, expected {want}")
    report("psycopg3", psycopg.__version__, errors, [chk for _, chk in results])


if __name__ == "__main__":
    main()
