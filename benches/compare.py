#!/usr/bin/env python3
"""Behaviour a driver user notices, checked the same way against direct
Postgres, PgBouncer and pgsidecar (each in front of the same database,
transaction pooling, pool size 1 or 2): session settings leaking between
clients, a session advisory lock handed to another client, named prepared
statements across pooled servers, and a prepared statement after DDL
changed its result type.

    compare.py direct=DSN [NAME=DSN ...]

The first target must be a direct connection: migrations run there.

Prints one line per check and target: ok, or what went wrong.
"""
import sys
import time

import psycopg

TARGETS = [a.split("=", 1) for a in sys.argv[1:]]


def connect(dsn, **kw):
    return psycopg.connect(dsn, autocommit=True, **kw)


def search_path_leak(dsn):
    a, b = connect(dsn), connect(dsn)
    a.execute("SET search_path TO leaked_schema, public")
    seen = b.execute("SHOW search_path").fetchone()[0]
    a.close(), b.close()
    return "ok" if "leaked_schema" not in seen else f"LEAK: another client sees search_path = {seen}"


def advisory_lock_handoff(dsn):
    a, b = connect(dsn), connect(dsn)
    a.execute("SELECT pg_advisory_lock(4242)")
    got = sum(1 for _ in range(20) if b.execute("SELECT pg_try_advisory_lock(4242)").fetchone()[0])
    if got:
        for _ in range(got):
            b.execute("SELECT pg_advisory_unlock(4242)")
    a.execute("SELECT pg_advisory_unlock_all()")
    a.close(), b.close()
    return "ok" if got == 0 else f"LEAK: another client obtained the held lock {got}/20 times"


def prepared_statements(dsn):
    a, b = connect(dsn, prepare_threshold=0), connect(dsn, prepare_threshold=0)
    try:
        for i in range(20):
            for c in (a, b):
                c.execute("SELECT %s::int + 1", (i,)).fetchone()
        return "ok"
    except psycopg.Error as e:
        return f"ERROR: {str(e).splitlines()[0]}"
    finally:
        a.close(), b.close()


def ddl_changes_result_type(dsn):
    # The migration runs on a direct connection of its own, as it would in
    # production (psycopg forgets its own statements after DDL it ran).
    setup = connect(TARGETS[0][1])
    setup.execute("DROP TABLE IF EXISTS compare_ddl")
    setup.execute("CREATE TABLE compare_ddl (id int)")
    setup.execute("INSERT INTO compare_ddl VALUES (1)")
    c = connect(dsn, prepare_threshold=0)
    # Reads may be served by a replica: wait until the table reached it.
    for _ in range(100):
        try:
            connect(dsn).execute("SELECT 1 FROM compare_ddl").fetchall()
            break
        except psycopg.Error:
            time.sleep(0.05)
    errors = []
    try:
        c.execute("SELECT * FROM compare_ddl WHERE id = %s", (1,)).fetchall()
        setup.execute("ALTER TABLE compare_ddl ADD COLUMN note text DEFAULT 'new'")
        lsn = setup.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        wait_replayed(dsn, lsn)
        # A driver may see the server's error once and prepare again; what
        # matters is whether the statement works again, and how soon.
        for _ in range(3):
            try:
                row = c.execute("SELECT * FROM compare_ddl WHERE id = %s", (1,)).fetchone()
                if len(row) != 2:
                    return f"WRONG: {row}"
                return "ok" if not errors else f"ok after {len(errors)} error(s): {errors[0]}"
            except psycopg.Error as e:
                errors.append(str(e).splitlines()[0])
        return f"BROKEN: {errors[-1]}"
    finally:
        c.close()
        setup.execute("DROP TABLE IF EXISTS compare_ddl")
        setup.close()


def wait_replayed(dsn, lsn):
    """Until a read through `dsn` (possibly on a replica) has replayed `lsn`."""
    c = connect(dsn)
    for _ in range(100):
        caught_up = c.execute(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= %s::pg_lsn, true)", (lsn,)
        ).fetchone()[0]
        if caught_up:
            break
        time.sleep(0.05)
    c.close()


CHECKS = [
    ("search_path stays with its client", search_path_leak),
    ("advisory lock stays with its client", advisory_lock_handoff),
    ("named prepared statements, 2 clients", prepared_statements),
    ("prepared SELECT * after a migration", ddl_changes_result_type),
]

width = max(len(n) for n, _ in CHECKS)
for label, check in CHECKS:
    for name, dsn in TARGETS:
        try:
            result = check(dsn)
        except Exception as e:  # a broken target must not stop the others
            result = f"ERROR: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        print(f"{label:<{width}}  {name:<10} {result}")
