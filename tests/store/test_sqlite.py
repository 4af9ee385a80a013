"""What only the SQLite backend promises: files it refuses, migrations, expiry, locking."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fwdmilter.config import StoreSettings
from fwdmilter.errors import StoreSchemaError, StoreUnavailable
from fwdmilter.store import open_store
from fwdmilter.store.base import SCHEMA_VERSION, Forward
from fwdmilter.store.sqlite import MIGRATIONS, SQLiteStore
from tests.store.conftest import Clock, entry, fwd, rec


def _open(path: Path, clock: Clock | None = None, **kwargs: Any) -> SQLiteStore:
    return SQLiteStore(path, clock=clock or Clock(), **kwargs)


def _user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])


# -- the file -------------------------------------------------------------------------------


def test_url_path_folder_and_modes(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "fwdmilter" / "state.db"
    store = open_store(StoreSettings(url=f"sqlite://{path}"))
    try:
        assert isinstance(store, SQLiteStore) and store.path == path
        store.put_forward(fwd())
        assert (path.stat().st_mode & 0o777) & 0o007 == 0  # not world-readable
        assert (path.parent.stat().st_mode & 0o777) & 0o007 == 0
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert _user_version(path) == SCHEMA_VERSION
    finally:
        store.close()


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = _open(path)
    store.put_forward(fwd())
    store.hold(entry())
    store.close()
    store = _open(path)
    assert store.get_forward(fwd().rcpt) == fwd()
    assert store.held_counts(entry().target) == (1, 0)
    store.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _open(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreSchemaError) as info:
        _open(path)
    assert str(path) in str(info.value)
    assert f"schema version {SCHEMA_VERSION + 1}, written by a newer fwdmilter" in str(info.value)
    assert "upgrade fwdmilter" in str(info.value)
    assert _user_version(path) == SCHEMA_VERSION + 1  # untouched


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_text("[store]\nurl = 'oops, this is a configuration file'\n" * 50)
    with pytest.raises(StoreSchemaError, match="not an SQLite database: move it away") as info:
        _open(path)
    assert str(path) in str(info.value)


def test_a_corrupt_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = _open(path)
    store.import_items(fwd(f"u{i}@fwd.example", f"t{i}@dest.example") for i in range(2000))
    store.close()
    with path.open("r+b") as f:  # garbage over two pages in the middle
        f.seek(4096 * 3)
        f.write(b"\xa5" * 4096 * 2)
    with pytest.raises(StoreSchemaError, match=r"corrupt.*restore a backup") as info:
        _open(path)
    assert str(path) in str(info.value)


def test_a_database_of_something_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE invoices (n INTEGER)")
    with pytest.raises(StoreSchemaError, match=r"something else.*invoices"):
        _open(path)
    assert _user_version(path) == 0


def test_a_folder_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.db").mkdir()
    with pytest.raises(StoreSchemaError, match="not a file"):
        _open(tmp_path / "state.db")


def test_a_folder_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreSchemaError, match="cannot create the folder"):
        _open(tmp_path / "file" / "sub" / "state.db")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder an unprivileged user can enter (pytest's own are root's only)."""
    folder = Path(tempfile.mkdtemp(prefix="fwdmilter-store-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


_OPEN_AS_USER = """
import json, sys
from fwdmilter.errors import StoreError
from fwdmilter.store.sqlite import SQLiteStore
try:
    SQLiteStore(sys.argv[1]).close()
except StoreError as exc:
    print(json.dumps([type(exc).__name__, str(exc)]))
else:
    print(json.dumps(["ok", ""]))
"""


def _open_as_nobody(path: Path) -> tuple[str, str]:
    """Open the store as an unprivileged user (root may write anything)."""
    if os.geteuid() != 0:
        try:
            SQLiteStore(path).close()
        except StoreSchemaError as exc:
            return "StoreSchemaError", str(exc)
        return "ok", ""
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_AS_USER, str(path)],
        user="nobody",
        group="nogroup",
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    name, message = json.loads(done.stdout)
    return str(name), str(message)


def test_an_unwritable_file_is_refused(shared_dir: Path) -> None:
    path = shared_dir / "state.db"
    _open(path).close()
    path.chmod(0o644)  # readable by all, writable by root only...
    if os.geteuid() == 0:
        shutil.chown(shared_dir, "nobody", "nogroup")  # ...in a folder the user may write
    name, message = _open_as_nobody(path)
    assert name == "StoreSchemaError"
    assert str(path) in message
    assert "not readable and writable by this user" in message
    assert "give the milter's user read and write access" in message


def test_an_unwritable_folder_is_refused(shared_dir: Path) -> None:
    name, message = _open_as_nobody(shared_dir / "state.db")
    assert name == "StoreSchemaError"
    assert f"the folder {shared_dir} is not writable" in message
    assert not (shared_dir / "state.db").exists()


def test_a_writable_file_works_for_its_user(shared_dir: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(shared_dir, "nobody", "nogroup")
    assert _open_as_nobody(shared_dir / "state.db") == ("ok", "")


# -- migrations ------------------------------------------------------------------------------


def _to_next(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE forwards ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE forwards SET note = 'migrated'")


def _broken_after(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE half_done (x INTEGER)")
    raise sqlite3.OperationalError("disk I/O error (simulated)")


def test_migration_forward_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = _open(path)
    old.put_forward(fwd())
    old.hold(entry())
    old.close()
    assert _user_version(path) == SCHEMA_VERSION

    store = _open(
        path, migrations={**MIGRATIONS, SCHEMA_VERSION: _to_next}, schema_version=SCHEMA_VERSION + 1
    )
    assert _user_version(path) == SCHEMA_VERSION + 1
    assert store.get_forward(fwd().rcpt) == fwd()
    assert store.held_counts(entry().target) == (1, 0)
    store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT note FROM forwards").fetchall() == [("migrated",)]


def test_migration_from_empty_runs_every_step_in_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = _open(
        path, migrations={**MIGRATIONS, SCHEMA_VERSION: _to_next}, schema_version=SCHEMA_VERSION + 1
    )
    store.close()
    assert _user_version(path) == SCHEMA_VERSION + 1
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(forwards)")]
    assert "note" in columns


def test_a_failed_migration_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _open(path).close()
    migrations = {**MIGRATIONS, SCHEMA_VERSION: _to_next, SCHEMA_VERSION + 1: _broken_after}
    with pytest.raises(StoreUnavailable, match="simulated"):
        _open(path, migrations=migrations, schema_version=SCHEMA_VERSION + 2)
    assert _user_version(path) == SCHEMA_VERSION
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        columns = [r[1] for r in conn.execute("PRAGMA table_info(forwards)")]
    assert "half_done" not in tables
    assert "note" not in columns


def test_a_missing_migration_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _open(path).close()
    with pytest.raises(
        StoreSchemaError, match=f"no migration from schema version {SCHEMA_VERSION}"
    ):
        _open(path, schema_version=SCHEMA_VERSION + 1)
    assert _user_version(path) == SCHEMA_VERSION


# -- expiry with an injected clock -----------------------------------------------------------


def test_expiry_and_purge(tmp_path: Path) -> None:
    clock = Clock()
    store = _open(tmp_path / "state.db", clock=clock)
    store.record_messages([rec(record_id="a"), rec(record_id="b")], ttl=60)
    store.record_messages([rec(record_id="c")], ttl=120)
    clock.advance(59.9)
    assert len(store.messages(rec().srs)) == 3
    clock.advance(0.2)
    assert [r.record_id for r in store.messages(rec().srs)] == ["c"]
    assert store.purge(clock.now - 100) == 0  # nothing had expired then
    assert store.purge(clock.now) == 2
    assert store.purge(clock.now) == 0
    clock.advance(60)
    assert store.messages(rec().srs) == []
    assert store.purge(clock.now) == 1
    store.close()


def test_writes_purge_now_and_then(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "state.db"
    store = _open(path, clock=clock, purge_every=3)
    store.record_messages([rec(record_id="old")], ttl=10)
    clock.advance(11)
    store.record_messages([rec(record_id="n1")], ttl=10)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    store.record_messages([rec(record_id="n2")], ttl=10)  # the third write purges
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 2
    store.close()


# -- locking ---------------------------------------------------------------------------------


def test_a_writer_waits_for_the_lock_then_gives_up_but_reads_go_on(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path, timeout=0.3)
    store.put_forward(fwd())
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            store.put_forward(fwd("bob@fwd.example", "bob@dest.example"))
        assert 0.25 < time.monotonic() - started < 2.0
        assert store.rcpt_info([fwd().rcpt])[0].forward == fwd()  # WAL: readers go on
        other.execute("ROLLBACK")
        store.put_forward(fwd("bob@fwd.example", "bob@dest.example"))
    finally:
        other.close()
        store.close()


def test_writers_of_one_process_queued_behind_a_lock_give_up_in_time(tmp_path: Path) -> None:
    """Threads of one process wait for each other on the store's own lock,
    and one waiting there longer than store.timeout gets StoreUnavailable
    (the milter's 451), as one waiting for another process's lock does."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    path = tmp_path / "state.db"
    store = SQLiteStore(path, timeout=0.3)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

        def write(i: int) -> tuple[str, float]:
            started = time.monotonic()
            try:
                store.put_forward(fwd(f"u{i}@fwd.example"))
            except StoreUnavailable as exc:
                return str(exc), time.monotonic() - started
            return "written", time.monotonic() - started

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(write, range(4)))
        assert all(what != "written" for what, _ in results)
        assert all(seconds < 1.5 for _, seconds in results)
        assert any("held the store" in what for what, _ in results)
        other.execute("ROLLBACK")
        with ThreadPoolExecutor(4) as pool:
            assert [w for w, _ in pool.map(write, range(4))] == ["written"] * 4
    finally:
        other.close()
        store.close()


def test_a_closed_store_is_unavailable(tmp_path: Path) -> None:
    store = _open(tmp_path / "state.db")
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.get_forward("x@fwd.example")


def test_threads_share_a_store(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    store = _open(tmp_path / "state.db")

    def work(i: int) -> Forward | None:
        store.put_forward(fwd(f"u{i}@fwd.example"))
        return store.get_forward(f"u{i}@fwd.example")

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(work, range(200)))
    assert got == [fwd(f"u{i}@fwd.example") for i in range(200)]
    store.close()
