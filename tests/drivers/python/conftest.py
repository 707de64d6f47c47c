# Shared fixtures for the Python driver tests. They run against a pgsidecar
# that tests/it/drivers_external.rs starts in transaction mode with
# `[pool] size = 2`, in front of a fresh database: PGSIDECAR_DSN is the
# proxy's connection string (role app), PGSIDECAR_DIRECT_DSN the primary's
# (same database, superuser, for looking from the side).
import os
import uuid

import pytest


def _dsn(var):
    value = os.environ.get(var)
    if not value:
        pytest.skip(
            f"{var} is not set: run these through `cargo test --test it drivers_external`"
        )
    return value


@pytest.fixture
def dsn():
    return _dsn("PGSIDECAR_DSN")


@pytest.fixture
def direct_dsn():
    return _dsn("PGSIDECAR_DIRECT_DSN")


@pytest.fixture
def table_name():
    """A table name of the test's own (tests share one database)."""
    return "t_" + uuid.uuid4().hex[:12]
