// postgres.js (the `postgres` package) through pgsidecar in transaction
// mode (pool of 2 servers), with its default `prepare: true`: tagged-
// template queries from a pool of 10 connections, sql.begin transactions
// (committed and rolled back) and concurrent work.
'use strict';
const test = require('node:test');
const assert = require('node:assert');
const postgres = require('postgres');
const { dsn, tableName } = require('./common');

test('prepared queries and transactions from 10 connections', async (t) => {
  const url = dsn(t);
  if (!url) return;
  const table = tableName();
  const sql = postgres(url, { max: 10, onnotice: () => {} });
  try {
    await sql.unsafe(`CREATE TABLE ${table} (worker int, n int)`);
    const worker = async (w) => {
      for (let n = 0; n < 30; n++) {
        const [{ s }] = await sql`SELECT ${w}::int + ${n}::int AS s`;
        assert.strictEqual(s, w + n);
        await sql.begin(async (tx) => {
          await tx`INSERT INTO ${tx(table)} ${tx({ worker: w, n })}`;
          const [{ c }] = await tx`SELECT count(*)::int AS c FROM ${tx(table)} WHERE worker = ${w}`;
          assert.strictEqual(c, n + 1);
        });
        if (n % 10 === 0) {
          await assert.rejects(
            sql.begin(async (tx) => {
              await tx`INSERT INTO ${tx(table)} ${tx({ worker: w, n: -1 })}`;
              throw new Error('roll back');
            }),
            /roll back/,
          );
        }
      }
    };
    await Promise.all([...Array(16).keys()].map(worker));
    const [{ c }] = await sql`SELECT count(*)::int AS c FROM ${sql(table)}`;
    assert.strictEqual(c, 16 * 30);
  } finally {
    await sql.end();
  }
});

test('a prepared query after DDL changed its result type', async (t) => {
  const url = dsn(t);
  if (!url) return;
  const table = tableName();
  const sql = postgres(url, { max: 3, onnotice: () => {} });
  try {
    await sql.unsafe(`CREATE TABLE ${table} (id int, v int)`);
    await sql.unsafe(`INSERT INTO ${table} VALUES (1, 10)`);
    const row = () => sql`SELECT * FROM ${sql(table)} WHERE id = ${1}`;
    for (let i = 0; i < 6; i++) assert.deepStrictEqual([...(await row())], [{ id: 1, v: 10 }]);
    await sql.unsafe(`ALTER TABLE ${table} ADD COLUMN extra text DEFAULT 'x'`);
    for (let i = 0; i < 6; i++) assert.deepStrictEqual([...(await row())], [{ id: 1, v: 10, extra: 'x' }]);
  } finally {
    await sql.end();
  }
});
