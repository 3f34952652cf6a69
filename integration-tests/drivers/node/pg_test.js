#!/usr/bin/env node
// node-postgres workload for Shardgate's driver matrix (integration-tests/tests/drivers.rs).
//
// Connection from PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE; DRIVER_TABLE is the prefix of
// every object it creates. Uses named prepared queries ({name, text, values}): node-postgres
// sends Parse for a name once per connection and afterwards only Bind/Execute with that name,
// across explicit BEGIN/COMMIT transactions and autocommit.
//
// Each of 20 concurrent clients (one connection each) sets its own search_path to a schema
// holding a table `marker` with the client's id, then checks counts/sums, `marker` and
// `SHOW search_path` across many transactions. Exits 1 with every failure listed.
'use strict';

const { Client } = require('pg');

const PREFIX = process.env.DRIVER_TABLE;
if (!PREFIX) {
  console.error('DRIVER_TABLE is not set');
  process.exit(2);
}
const CLIENTS = Number(process.env.DRIVER_CLIENTS || 20);
const ROUNDS = Number(process.env.DRIVER_ROUNDS || 8);
const DEFAULT_PATH = '"$user", public';
const TABLE = `public.${PREFIX}_items`;

const INS = `INSERT INTO ${TABLE} (client, round, v) VALUES ($1, $2, $3)`;
const SEL = `SELECT count(*)::int AS n, coalesce(sum(v), 0)::text AS s FROM ${TABLE} WHERE client = $1`;
const MARK = 'SELECT v, pg_backend_pid() AS pid FROM marker';
const SHOW = 'SHOW search_path';

const schema = (i) => `${PREFIX}_s${i}`;
const marker = (i) => `${PREFIX}-client-${i}`;

async function connect() {
  const c = new Client({ connectionTimeoutMillis: 10000 });
  await c.connect();
  return c;
}

async function setup() {
  const c = await connect();
  try {
    await c.query(`DROP TABLE IF EXISTS ${TABLE}`);
    await c.query(`CREATE TABLE ${TABLE} (client int NOT NULL, round int NOT NULL, v bigint NOT NULL)`);
    for (let i = 0; i < CLIENTS; i++) {
      await c.query(`DROP SCHEMA IF EXISTS ${schema(i)} CASCADE`);
      await c.query(`CREATE SCHEMA ${schema(i)}`);
      await c.query(`CREATE TABLE ${schema(i)}.marker (v text)`);
      await c.query(`INSERT INTO ${schema(i)}.marker VALUES ($1)`, [marker(i)]);
    }
  } finally {
    await c.end();
  }
}

class Check {
  constructor(i) {
    this.i = i;
    this.count = 0;
    this.sum = 0n;
    this.pids = new Set();
  }
  inserted(v) {
    this.count += 1;
    this.sum += BigInt(v);
  }
  totals(res) {
    const row = res.rows[0];
    const got = res.rows.length === 1 ? [row.n, BigInt(row.s)] : res.rows;
    if (res.rows.length !== 1 || got[0] !== this.count || got[1] !== this.sum) {
      throw new Error(`count/sum ${fmt(got)}, expected ${fmt([this.count, this.sum])}`);
    }
  }
  marker(res) {
    if (res.rows.length !== 1 || res.rows[0].v !== marker(this.i)) {
      throw new Error(
        `SELECT v FROM marker gave ${fmt(res.rows)}, expected '${marker(this.i)}' ` +
          "(another client's search_path, or ours lost)"
      );
    }
    this.pids.add(res.rows[0].pid);
  }
  path(res, expected) {
    if (res.rows.length !== 1 || res.rows[0].search_path !== expected) {
      throw new Error(`SHOW search_path gave ${fmt(res.rows)}, expected '${expected}'`);
    }
  }
}

function fmt(x) {
  return JSON.stringify(x, (_, v) => (typeof v === 'bigint' ? v.toString() : v));
}

const ins = (i, r, v) => ({ name: 'ins', text: INS, values: [i, r, v] });
const sel = (i) => ({ name: 'sel', text: SEL, values: [i] });
const mark = { name: 'mark', text: MARK };
const show = { name: 'show', text: SHOW };

async function client(i, gate) {
  const chk = new Check(i);
  let where = 'connect';
  let c = null;
  try {
    c = await connect();
    await gate.wait();
    where = 'before SET';
    chk.path(await c.query(show), DEFAULT_PATH);
    await c.query(`SET search_path TO ${schema(i)}`);
    for (let r = 0; r < ROUNDS; r++) {
      const vals = [1, 2, 3].map((k) => i * 1000 + r * 10 + k);
      where = `round ${r} BEGIN/COMMIT`;
      await c.query('BEGIN');
      for (const v of vals.slice(0, 2)) {
        await c.query(ins(i, r, v));
        chk.inserted(v);
      }
      chk.totals(await c.query(sel(i)));
      chk.marker(await c.query(mark));
      await c.query('COMMIT');
      where = `round ${r} autocommit`;
      await c.query(ins(i, r, vals[2]));
      chk.inserted(vals[2]);
      chk.totals(await c.query(sel(i)));
      chk.marker(await c.query(mark));
      chk.path(await c.query(show), schema(i));
    }
    where = 'after RESET';
    await c.query('RESET search_path');
    chk.path(await c.query(show), DEFAULT_PATH);
    return [null, chk];
  } catch (e) {
    return [`client ${i}: ${where}: ${e && e.message ? e.message : e}`, chk];
  } finally {
    if (c) await c.end().catch(() => {});
  }
}

function gate(n) {
  let open;
  const opened = new Promise((resolve) => (open = resolve));
  return {
    async wait() {
      n -= 1;
      if (n === 0) open();
      let timer;
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error('start gate: other clients did not connect in 60 s')), 60000);
      });
      try {
        await Promise.race([opened, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

async function main() {
  await setup();
  const g = gate(CLIENTS);
  const results = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => client(i, g)));
  const errors = results.filter(([err]) => err).map(([err]) => err);
  if (errors.length === 0) {
    const c = await connect();
    try {
      const res = await c.query(
        `SELECT client, count(*)::int AS n, sum(v)::text AS s FROM ${TABLE} GROUP BY client ORDER BY client`
      );
      const got = fmt(res.rows.map((r) => [r.client, r.n, BigInt(r.s)]));
      const want = fmt(results.map(([, chk], i) => [i, chk.count, chk.sum]));
      if (got !== want) errors.push(`final table contents per client ${got}, expected ${want}`);
    } finally {
      await c.end();
    }
  }
  if (errors.length > 0) {
    console.error(`node-postgres: ${errors.length} failure(s):`);
    for (const e of errors) console.error('  ' + e);
    process.exit(1);
  }
  const pids = results.map(([, chk]) => chk.pids.size);
  const version = require('pg/package.json').version;
  console.log(
    `node-postgres ${version}: OK, ${CLIENTS} clients x ${ROUNDS} rounds; ` +
      `server backends seen per client: min ${Math.min(...pids)}, max ${Math.max(...pids)}`
  );
}

main().catch((e) => {
  console.error(`node-postgres: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
