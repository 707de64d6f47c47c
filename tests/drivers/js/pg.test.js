// node-postgres (`pg`) through pgsidecar in transaction mode (pool of 2
// servers): named queries `{name, text, values}` from a pg.Pool of 10
// clients, across many transactions; a failed transaction rolls back and
// the named statements keep working; a named query whose result type
// changed after DDL still runs.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const pg = require('pg');
const { dsn, tableName } = require('./common');

test('named queries across a pool of 10 and many transactions', async (t) => {
  const url = dsn(t);
  if (!url) return;
  const table = tableName();
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  try {
    await pool.query(`CREATE TABLE ${table} (worker int, n int)`);
    const insert = `INSERT INTO ${table} (worker, n) VALUES ($1, $2)`;
    const count = `SELECT count(*)::int AS c FROM ${table} WHERE worker = $1`;
    const worker = async (w) => {
      for (let n = 0; n < 30; n++) {
        const sum = await pool.query({ name: 'sum', text: 'SELECT $1::int + $2::int AS s', values: [w, n] });
        assert.strictEqual(sum.rows[0].s, w + n);
        const client = await pool.connect();
        try {
          await client.query('BEGIN');
          await client.query({ name: 'insert', text: insert, values: [w, n] });
          const c = await client.query({ name: 'count', text: count, values: [w] });
          assert.strictEqual(c.rows[0].c, n + 1);
          await client.query('COMMIT');
        } finally {
          client.release();
        }
      }
    };
    await Promise.all([...Array(16).keys()].map(worker));
    const total = await pool.query({ name: 'total', text: `SELECT count(*)::int AS c FROM ${table}` });
    assert.strictEqual(total.rows[0].c, 16 * 30);
  } finally {
    await pool.end();
  }
});

test('a failed transaction rolls back and named queries keep working', async (t) => {
  const url = dsn(t);
  if (!url) return;
  const table = tableName();
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`CREATE TABLE ${table} (n int primary key)`);
    const insert = { name: 'ins', text: `INSERT INTO ${table} VALUES ($1)` };
    await client.query('BEGIN');
    await client.query({ ...insert, values: [1] });
    await assert.rejects(client.query({ ...insert, values: [1] }), /duplicate key/);
    await assert.rejects(client.query({ ...insert, values: [2] }), /current transaction is aborted/);
    await client.query('ROLLBACK');
    await client.query({ ...insert, values: [3] });
    const r = await client.query({ name: 'all', text: `SELECT array_agg(n)::text AS a FROM ${table}` });
    assert.strictEqual(r.rows[0].a, '{3}');
  } finally {
    await client.end();
  }
});

// Runs the named query `q` (whose last column is `pid`, the backend's) on
// `c` until it has run on both servers of the pool of 2: every other time
// while `holder` keeps a server in a transaction, so that it runs on the
// other one. Returns the rows without their pid.
async function onBothServers(c, holder, q) {
  const rows = [];
  const pids = new Set();
  const run = async () => {
    for (const { pid, ...row } of (await c.query(q)).rows) {
      pids.add(pid);
      rows.push(row);
    }
  };
  for (let attempt = 0; attempt < 20 && pids.size < 2; attempt++) {
    if (attempt % 2 === 0) {
      await holder.query('BEGIN');
      await holder.query('SELECT 1');
      await run();
      await holder.query('COMMIT');
    } else {
      await run();
    }
  }
  assert.strictEqual(pids.size, 2, `20 runs saw only the server(s) ${[...pids]}`);
  return rows;
}

test('a named query after DDL changed its result type', async (t) => {
  const url = dsn(t);
  if (!url) return;
  const table = tableName();
  const a = new pg.Client({ connectionString: url });
  const b = new pg.Client({ connectionString: url });
  await a.connect();
  await b.connect();
  try {
    await a.query(`CREATE TABLE ${table} (id int, v int)`);
    await a.query(`INSERT INTO ${table} VALUES (1, 10)`);
    const q = { name: 'row', text: `SELECT *, pg_backend_pid() AS pid FROM ${table} WHERE id = $1`, values: [1] };
    for (const row of await onBothServers(a, b, q)) assert.deepStrictEqual(row, { id: 1, v: 10 });
    await b.query(`ALTER TABLE ${table} ADD COLUMN extra text DEFAULT 'x'`);
    // Outside a transaction the proxy re-prepares and retries once.
    for (const row of await onBothServers(a, b, q)) assert.deepStrictEqual(row, { id: 1, v: 10, extra: 'x' });
  } finally {
    await a.end();
    await b.end();
  }
});
