#!/usr/bin/env python3
"""asyncpg workload for Shardgate's driver matrix (integration-tests/tests/drivers.rs).

Connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; DRIVER_TABLE is the prefix of every
object it creates. asyncpg keeps its DEFAULT statement cache: every query with or without
arguments is prepared once per connection as a named server-side statement
(`__asyncpg_stmt_N__`) and re-bound on every later call, in and out of
`async with conn.transaction()`.

Each of 20 concurrent clients (tasks, one connection each) sets its own search_path to a schema
holding a table `marker` with the client's id, then checks counts/sums, `marker` and
`SHOW search_path` across many transactions. Exits 1 with every failure listed.
"""
import asyncio

import asyncpg

from common import CLIENTS, DEFAULT_PATH, MARK, ROUNDS, SHOW, TABLE, Check, marker, report, schema

INS = f"INSERT INTO {TABLE} (client, round, v) VALUES ($1, $2, $3)"
SEL = f"SELECT count(*), sum(v) FROM {TABLE} WHERE client = $1"


async def connect():
    # statement_cache_size is left at its default (100).
    return await asyncpg.connect(timeout=10)


async def setup():
    c = await connect()
    try:
        await c.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await c.execute(
            f"CREATE TABLE {TABLE} (client int NOT NULL, round int NOT NULL, v bigint NOT NULL)"
        )
        for i in range(CLIENTS):
            await c.execute(f"DROP SCHEMA IF EXISTS {schema(i)} CASCADE")
            await c.execute(f"CREATE SCHEMA {schema(i)}")
            await c.execute(f"CREATE TABLE {schema(i)}.marker (v text)")
            await c.execute(f"INSERT INTO {schema(i)}.marker VALUES ($1)", marker(i))
    finally:
        await c.close()


async def client(i, start):
    chk = Check(i)
    where = "connect"
    c = None
    try:
        c = await connect()
        await start.wait()
        where = "before SET"
        chk.path(await c.fetchrow(SHOW), DEFAULT_PATH)
        await c.execute(f"SET search_path TO {schema(i)}")
        for r in range(ROUNDS):
            vals = [i * 1000 + r * 10 + k for k in (1, 2, 3)]
            where = f"round {r} in conn.transaction()"
            async with c.transaction():
                for v in vals[:2]:
                    await c.execute(INS, i, r, v)
                    chk.inserted(v)
                chk.totals(await c.fetchrow(SEL, i))
                chk.marker(await c.fetchrow(MARK))
            where = f"round {r} autocommit"
            await c.execute(INS, i, r, vals[2])
            chk.inserted(vals[2])
            chk.totals(await c.fetchrow(SEL, i))
            chk.marker(await c.fetchrow(MARK))
            chk.path(await c.fetchrow(SHOW), schema(i))
        where = "after RESET"
        await c.execute("RESET search_path")
        chk.path(await c.fetchrow(SHOW), DEFAULT_PATH)
        return None, chk
    except BaseException as e:  # noqa: BLE001 - every failure is reported
        kind = "" if isinstance(e, AssertionError) else f"{type(e).__name__}: "
        return f"client {i}: {where}: {kind}{e}".strip(), chk
    finally:
        if c is not None:
            await c.close(timeout=5)


class Gate:
    """A start line: all clients connect first, then run together."""

    def __init__(self, n):
        self.n = n
        self.ev = asyncio.Event()

    async def wait(self):
        self.n -= 1
        if self.n == 0:
            self.ev.set()
        await asyncio.wait_for(self.ev.wait(), 60)


async def main():
    await setup()
    gate = Gate(CLIENTS)
    results = await asyncio.gather(*(client(i, gate) for i in range(CLIENTS)))
    errors = [err for err, _ in results if err]
    if not errors:
        c = await connect()
        try:
            rows = await c.fetch(
                f"SELECT client, count(*), sum(v) FROM {TABLE} GROUP BY client ORDER BY client"
            )
        finally:
            await c.close()
        got = {r[0]: (r[1], int(r[2])) for r in rows}
        want = {i: (chk.count, chk.sum) for i, (_, chk) in enumerate(results)}
        if got != want:
            errors.append(f"final table contents per client {got}, expected {want}")
    report("asyncpg", asyncpg.__version__, errors, [chk for _, chk in results])


if __name__ == "__main__":
    asyncio.run(main())
