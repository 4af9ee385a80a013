"""Schema 2 (pending targets, web tokens) over data that schema 1 wrote."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fwdmilter.config import StoreSettings
from fwdmilter.store import open_store
from fwdmilter.store.base import SCHEMA_VERSION, Forward
from fwdmilter.store.sqlite import MIGRATIONS, SQLiteStore
from tests.harness.redis import RedisServer


def test_an_sqlite_file_of_schema_1_gains_pending_columns_and_web_tables(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    old = SQLiteStore(path, migrations={0: MIGRATIONS[0]}, schema_version=1)
    old.close()
    with sqlite3.connect(path) as conn:  # a row as version 1 wrote it
        conn.execute(
            "INSERT INTO forwards VALUES ('a@fwd.example', 'a@dest.example', '', 'forward',"
            " '', 1.0, 2.0)"
        )
    conn.close()
    store = SQLiteStore(path)
    try:
        assert store.get_forward("a@fwd.example") == Forward(
            "a@fwd.example", ("a@dest.example",), created=1.0, updated=2.0
        )
        assert store.count_hit("k", 60, 1000.0) == 1
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert version == SCHEMA_VERSION == 4
    assert {"web_tokens", "web_rates"} <= tables


def test_a_redis_prefix_of_schema_1_is_moved_to_3_keeping_its_forwards(
    redis_server: RedisServer,
) -> None:
    prefix = "fwdmilter:v1"
    with redis_server.admin() as r:
        r.set(f"{prefix}:schema", "1")
        r.hset(
            f"{prefix}:forward:{{a@fwd.example}}",
            mapping={
                "rcpt": "a@fwd.example",
                "target": "a@dest.example",
                "contact": "",
                "null_sender": "forward",
                "moved_to": "",
                "created": "1.0",
                "updated": "2.0",
            },
        )
    store = open_store(StoreSettings(url=redis_server.url, prefix=prefix))
    try:
        got = store.get_forward("a@fwd.example")
        assert got == Forward("a@fwd.example", ("a@dest.example",), created=1.0, updated=2.0)
    finally:
        store.close()
    with redis_server.admin() as r:
        assert r.get(f"{prefix}:schema") == str(SCHEMA_VERSION) == "4"
