"""The registry's write transaction waits for other programs within ``cases.lock_wait_s``, at
BEGIN and at COMMIT alike (exact outcomes on a tiny SQLite file)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from detector.errors import OutputError
from detector.review import gpkg


def test_commit_waiting_for_a_reader_is_bounded_and_rolled_back(tmp_path):
    """A registry in rollback-journal mode, a reader (QGIS) holding its SHARED lock: COMMIT cannot
    take the EXCLUSIVE lock. It gives up at the limit with one line naming the file, and the
    transaction is rolled back (nothing half-written)."""
    path = tmp_path / "cases.gpkg"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode = DELETE")
    setup.execute("CREATE TABLE t (x INTEGER)")
    setup.close()
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM t").fetchone() == (0,)  # holds SHARED
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    start = time.monotonic()
    with gpkg.lock_wait(0.5), pytest.raises(OutputError) as err:
        with gpkg.write_transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
    waited = time.monotonic() - start
    assert 0.5 <= waited < 3.0, waited  # not 20 retries of a 30 s busy timeout
    assert str(path) in str(err.value) and len(str(err.value).splitlines()) == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone() == (30000,)  # restored
    reader.execute("COMMIT")
    assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)  # rolled back
    conn.close()
    reader.close()
