"""pytest plugin: deselects the tests named in pgsidecar's lists, each with
its reason, and counts them by reason in the summary.

Ours, not psycopg's. Loaded with `-p pgsidecar_deselect` (tests/suites on
PYTHONPATH), one `--deselect-list FILE` per list (see tests/suites/README.md
for the format). An entry that matches no collected test is an error, so a
list cannot silently drift from the suite it describes.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field

import pytest


@dataclass
class Entry:
    pattern: str
    reason: str
    source: str
    hits: int = 0

    def matches(self, nodeid: str) -> bool:
        if self.pattern.endswith("*"):
            return nodeid.startswith(self.pattern[:-1])
        return nodeid == self.pattern


@dataclass
class Lists:
    entries: list[Entry] = field(default_factory=list)
    by_reason: Counter = field(default_factory=Counter)


KEY = pytest.StashKey[Lists]()


def parse(path: str) -> list[Entry]:
    """`# reason: TEXT` starts a group; each following line is a test id, or
    an id prefix ending in `*`; other `#` lines and blank lines are ignored."""
    entries, reason, name = [], None, os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if line.startswith("# reason:"):
                reason = line[len("# reason:") :].strip()
            elif line and not line.startswith("#"):
                if not reason:
                    raise pytest.UsageError(f"{path}:{number}: a test before any '# reason:' line")
                entries.append(Entry(line, reason, name))
    return entries


def pytest_addoption(parser):
    parser.addoption(
        "--deselect-list",
        action="append",
        default=[],
        metavar="FILE",
        help="deselect the tests listed in FILE (pgsidecar's format), by reason",
    )


def pytest_configure(config):
    lists = Lists()
    for path in config.getoption("--deselect-list"):
        lists.entries.extend(parse(path))
    config.stash[KEY] = lists



@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    # tryfirst: before `-m` deselects anything, so that every listed test is
    # seen and a stale entry can be told from one outside the -m selection.
    lists = config.stash[KEY]
    if not lists.entries:
        return
    keep, dropped = [], []
    for item in items:
        entry = next((e for e in lists.entries if e.matches(item.nodeid)), None)
        if entry is None:
            keep.append(item)
        else:
            entry.hits += 1
            lists.by_reason[(entry.source, entry.reason)] += 1
            dropped.append(item)
    collected_files = {item.nodeid.split("::")[0] for item in items}
    stale = [
        e
        for e in lists.entries
        if not e.hits
        and (
            e.pattern.split("::")[0] in collected_files
            or not os.path.exists(os.path.join(str(config.rootpath), e.pattern.split("::")[0]))
        )
    ]
    if stale:
        names = "\n".join(f"  {e.source}: {e.pattern}" for e in stale)
        raise pytest.UsageError(f"deselect list entries that match no test:\n{names}")
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lists = config.stash[KEY]
    if not lists.by_reason:
        return
    terminalreporter.section("deselected by pgsidecar's lists")
    for (source, reason), count in lists.by_reason.items():
        terminalreporter.line(f"{count:5}  {source}: {reason}")


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    """Names a test close to its pytest-timeout limit: the thread method's
    report shows only stacks before it ends the run."""
    if settings.timeout and settings.timeout > 0:
        timer = threading.Timer(
            settings.timeout * 0.9,
            lambda: print(f"\n{item.nodeid} still running after {settings.timeout * 0.9:.0f}s", file=sys.stderr, flush=True),
        )
        timer.daemon = True
        timer.start()
        item.stash[TIMER] = timer
    return None  # pytest-timeout sets its own timer as well


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_cancel_timer(item):
    timer = item.stash.get(TIMER, None)
    if timer is not None:
        timer.cancel()
    return None


TIMER = pytest.StashKey[threading.Timer]()
