# asyncpg through pgsidecar in transaction mode (pool of 2 servers): a
# create_pool of 20 connections with asyncpg's default statement cache,
# many tasks interleaving plain queries, prepared statements and
# transactions; and asyncpg's own recovery after DDL changes a cached
# statement's result type.
import asyncio

import asyncpg


def run(coro):
    return asyncio.run(coro)


def test_pool_of_20_interleaved_queries_and_transactions(dsn, table_name):
    async def main():
        pool = await asyncpg.create_pool(dsn, min_size=20, max_size=20)
        try:
            await pool.execute(
                f"CREATE TABLE {table_name} (task int, n int, note text)"
            )

            async def task(t):
                for n in range(25):
                    # Default statement cache: each query is prepared once
                    # per connection and reused.
                    assert await pool.fetchval("SELECT $1::int * 2", t * 100 + n) == 2 * (
                        t * 100 + n
                    )
                    async with pool.acquire() as conn:
                        async with conn.transaction():
                            await conn.execute(
                                f"INSERT INTO {table_name} VALUES ($1, $2, $3)",
                                t,
                                n,
                                f"task {t}",
                            )
                            rows = await conn.fetch(
                                f"SELECT n FROM {table_name} WHERE task = $1 ORDER BY n",
                                t,
                            )
                            assert [r["n"] for r in rows] == list(range(n + 1))
                        stmt = await conn.prepare(
                            f"SELECT note FROM {table_name} WHERE task = $1 AND n = $2"
                        )
                        assert await stmt.fetchval(t, n) == f"task {t}"
                    if n % 5 == 0:
                        # A transaction that rolls back leaves nothing.
                        async with pool.acquire() as conn:
                            tr = conn.transaction()
                            await tr.start()
                            await conn.execute(
                                f"INSERT INTO {table_name} VALUES ($1, -1, 'gone')", t
                            )
                            await tr.rollback()

            await asyncio.gather(*(task(t) for t in range(40)))
            assert await pool.fetchval(f"SELECT count(*) FROM {table_name}") == 40 * 25
            assert (
                await pool.fetchval(f"SELECT count(*) FROM {table_name} WHERE n < 0")
                == 0
            )
        finally:
            await pool.close()

    run(main())


def test_cached_statement_after_ddl(dsn, table_name):
    async def main():
        pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
        try:
            await pool.execute(f"CREATE TABLE {table_name} (id int, v int)")
            await pool.execute(f"INSERT INTO {table_name} VALUES (1, 10)")
            query = f"SELECT * FROM {table_name} WHERE id = $1"
            for _ in range(8):
                assert tuple(await pool.fetchrow(query, 1)) == (1, 10)
            await pool.execute(f"ALTER TABLE {table_name} ADD COLUMN extra text DEFAULT 'x'")
            for _ in range(8):
                assert tuple(await pool.fetchrow(query, 1)) == (1, 10, "x")
            await pool.execute(f"ALTER TABLE {table_name} ALTER COLUMN v TYPE bigint")
            for _ in range(8):
                assert tuple(await pool.fetchrow(query, 1)) == (1, 10, "x")
        finally:
            await pool.close()

    run(main())
