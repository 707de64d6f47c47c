# psycopg 3 through pgsidecar in transaction mode (pool of 2 servers):
# with prepare_threshold=0 every query is a named prepared statement, used
# by more clients than servers across many transactions; pipeline mode
# sends many statements before one Sync; after DDL changes a prepared
# statement's result type the next execution still works.
import threading

import psycopg
import pytest


def connect(dsn, **kw):
    return psycopg.connect(dsn, prepare_threshold=0, **kw)


def test_prepared_statements_across_transactions_and_clients(dsn, table_name):
    with connect(dsn, autocommit=True) as setup:
        setup.execute(f"CREATE TABLE {table_name} (who int, n int)")

    errors = []

    def work(who):
        try:
            with connect(dsn) as conn:
                for n in range(40):
                    # Each block is one transaction; the server may differ.
                    with conn.transaction():
                        row = conn.execute("SELECT %s::int + %s::int", (who, n)).fetchone()
                        assert row == (who + n,)
                        conn.execute(
                            f"INSERT INTO {table_name} (who, n) VALUES (%s, %s)", (who, n)
                        )
                    got = conn.execute(
                        f"SELECT count(*) FROM {table_name} WHERE who = %s", (who,)
                    ).fetchone()
                    assert got == (n + 1,)
                    conn.commit()
                # psycopg really prepared them (names it chose).
                assert len(conn._prepared._names) >= 3
        except Exception as e:  # reported below, with the client's number
            errors.append((who, repr(e)))

    threads = [threading.Thread(target=work, args=(who,)) for who in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with connect(dsn, autocommit=True) as check:
        assert check.execute(f"SELECT count(*) FROM {table_name}").fetchone() == (240,)


def test_pipeline_mode(dsn, table_name):
    with connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (n int primary key, sq int)")
        with conn.pipeline():
            with conn.cursor() as cur:
                for n in range(200):
                    cur.execute(
                        f"INSERT INTO {table_name} (n, sq) VALUES (%s, %s)", (n, n * n)
                    )
                cur.execute(f"SELECT count(*), sum(sq) FROM {table_name}")
                assert cur.fetchone() == (200, sum(n * n for n in range(200)))
        # Several statements queued, results read at the end.
        with conn.pipeline() as p:
            curs = []
            for n in (3, 7, 11):
                c = conn.cursor()
                c.execute(f"SELECT sq FROM {table_name} WHERE n = %s", (n,))
                curs.append(c)
            p.sync()
            assert [c.fetchone()[0] for c in curs] == [9, 49, 121]


def test_pipeline_in_a_transaction_that_fails_rolls_back(dsn, table_name):
    with connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (n int primary key)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.transaction():
                with conn.pipeline():
                    for n in (1, 2, 2, 3):
                        conn.execute(f"INSERT INTO {table_name} VALUES (%s)", (n,))
        assert conn.execute(f"SELECT count(*) FROM {table_name}").fetchone() == (0,)
        # The connection (and its prepared statements) still work.
        conn.execute(f"INSERT INTO {table_name} VALUES (%s)", (5,))
        assert conn.execute(f"SELECT count(*) FROM {table_name}").fetchone() == (1,)


def test_statements_skipped_after_an_error_in_a_pipeline_still_work(dsn, table_name):
    # After an error the server skips the rest of the pipeline, including
    # the Parse of a statement first used there: it must be prepared again
    # when the client uses it later.
    with connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table_name} (n int primary key)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline():
                conn.execute(f"INSERT INTO {table_name} VALUES (%s)", (1,))
                conn.execute(f"INSERT INTO {table_name} VALUES (%s)", (1,))
                conn.execute("SELECT 42 + %s::int", (0,))
        for n in range(3):
            assert conn.execute("SELECT 42 + %s::int", (n,)).fetchone() == (42 + n,)


def on_both_servers(conn, holder, query, params):
    """Runs `query` (whose last column is pg_backend_pid()) on `conn` until
    it has run on both servers of the pool of 2: every other time while
    `holder` keeps a server in a transaction, so that it runs on the other
    one. Returns the rows without their pid."""
    rows, pids = [], set()
    for attempt in range(20):
        if attempt % 2 == 0:
            with holder.transaction():
                holder.execute("SELECT 1")
                row = conn.execute(query, params).fetchone()
        else:
            row = conn.execute(query, params).fetchone()
        rows.append(row[:-1])
        pids.add(row[-1])
        if len(pids) == 2:
            return rows
    raise AssertionError(f"20 runs saw only the server(s) {pids}")


@pytest.mark.parametrize(
    "ddl,after",
    [
        ("ALTER TABLE {t} ADD COLUMN extra text DEFAULT 'x'", (1, 10, "x")),
        ("ALTER TABLE {t} ALTER COLUMN v TYPE bigint", (1, 10)),
    ],
    ids=["add_column", "alter_type"],
)
def test_result_type_change_after_ddl(dsn, direct_dsn, table_name, ddl, after):
    with connect(dsn, autocommit=True) as conn, connect(dsn, autocommit=True) as other:
        conn.execute(f"CREATE TABLE {table_name} (id int, v int)")
        conn.execute(f"INSERT INTO {table_name} VALUES (1, 10)")
        query = f"SELECT *, pg_backend_pid() FROM {table_name} WHERE id = %s"
        rows = on_both_servers(conn, other, query, (1,))
        assert set(rows) == {(1, 10)}
        # A migration run elsewhere (psycopg itself forgets its statements
        # after DDL it runs, so that would not test the proxy).
        with psycopg.connect(direct_dsn, autocommit=True) as migration:
            migration.execute(ddl.format(t=table_name))
        # Outside a transaction the proxy re-prepares and retries once, on
        # whichever server still had the old statement.
        rows = on_both_servers(conn, other, query, (1,))
        assert set(rows) == {after}
