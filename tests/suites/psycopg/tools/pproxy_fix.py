"""Starts pproxy, for tests/fix_proxy.py.

Not psycopg's file: pgsidecar's stand-in for psycopg's tools/pproxy_fix.py,
which fix_proxy.py runs but which lives outside psycopg's tests/ folder. On
the Python versions CI uses (< 3.14) pproxy's own entry point is all it takes.
"""

import sys

from pproxy.server import main

if __name__ == "__main__":
    sys.exit(main())
