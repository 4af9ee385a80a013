"""The SQLite backend: the store of a single host.

Several milter processes and fwdctl may use one file at once:

- WAL journal: readers never wait for the writer, nor the writer for readers.
- Every write is one ``BEGIN IMMEDIATE`` transaction: it takes the write lock
  before reading, so two writers never both read old state and then collide
  (which deferred transactions do, and then fail without waiting).
- ``busy_timeout`` = ``store.timeout``: a writer waits that long for another's
  lock, then the operation fails with StoreUnavailable (the milter's 4xx).
- ``synchronous=NORMAL`` (WAL's recommended setting: a crashed process loses
  nothing, a power cut may lose the last commits, which at worst holds a bounce
  for which the message record was lost); held-mail transitions commit with
  ``synchronous=FULL`` because a lost held entry would leave a bounce in the
  MTA's hold queue that fwdctl no longer knows.

Connections: a small pool, each connection used by one thread at a time.
libmilter runs one thread per SMTP connection, so connections per thread
would be opened and thrown away with every SMTP session; one connection
behind a lock would make every reader of this process wait while a writer
waits for another process's lock. The pool keeps a few connections open and
opens more when more threads need one at once.

Held counters are not stored: ``SELECT count(*)`` over the held table's
primary key (target, entry_id) reads only the entries of one target, and a
count derived from the entries cannot disagree with them under any
concurrency.

Schema: ``PRAGMA user_version`` holds the version; :data:`MIGRATIONS` takes
a database from each version to the next, all steps in one transaction. A
newer version, a file that is not an SQLite database or fails
``PRAGMA quick_check``, or a file or folder the milter cannot write is
refused when the store is opened (:class:`StoreSchemaError` naming the file
and what to do), so the milter refuses to start rather than lose state.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from fwdmilter.addr import domain_of, key
from fwdmilter.errors import StoreError, StoreSchemaError, StoreUnavailable
from fwdmilter.store import _codec
from fwdmilter.store._guard import guarded_by
from fwdmilter.store.base import (
    SCHEMA_VERSION,
    Forward,
    HeldEntry,
    MessageRecord,
    MessageState,
    RcptInfo,
    Stats,
    Store,
    WebToken,
    WebTokenKind,
)

__all__ = ["MIGRATIONS", "Migration", "SQLiteStore"]


#: One step: changes a database of version N (its key) into version N + 1,
#: inside the caller's transaction (so: no executescript, which commits).
Migration = Callable[[sqlite3.Connection], None]

_V1: Final = (
    """CREATE TABLE forwards (
        rcpt        TEXT PRIMARY KEY,
        target      TEXT NOT NULL,
        contact     TEXT NOT NULL,
        null_sender TEXT NOT NULL,
        moved_to    TEXT NOT NULL,
        created     REAL NOT NULL,
        updated     REAL NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE messages (
        srs       TEXT NOT NULL,
        record_id TEXT NOT NULL,
        msg_id    TEXT NOT NULL,
        state     TEXT NOT NULL,
        sender    TEXT NOT NULL,
        rcpt      TEXT NOT NULL,
        target    TEXT NOT NULL,
        created   REAL NOT NULL,
        instance  TEXT NOT NULL,
        queue_id  TEXT NOT NULL,
        held_id   TEXT NOT NULL,
        expires   REAL NOT NULL,
        PRIMARY KEY (srs, record_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX messages_by_expiry ON messages (expires)",
    """CREATE TABLE held (
        target      TEXT NOT NULL,
        entry_id    TEXT NOT NULL,
        state       TEXT NOT NULL CHECK (state IN ('H', 'R', 'N')),
        sender      TEXT NOT NULL,
        rcpt        TEXT NOT NULL,
        queue_id    TEXT NOT NULL,
        host        TEXT NOT NULL,
        reason      TEXT NOT NULL,
        held_at     REAL NOT NULL,
        srs         TEXT NOT NULL,
        msg_id      TEXT NOT NULL,
        contact     TEXT NOT NULL,
        requeued_at REAL NOT NULL,
        alerted     INTEGER NOT NULL,
        PRIMARY KEY (target, entry_id)
    ) WITHOUT ROWID""",
)


def _create_v1(conn: sqlite3.Connection) -> None:
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    if tables:
        names = ", ".join(str(t["name"]) for t in tables)
        raise StoreSchemaError(
            f"an SQLite database of something else (tables: {names}); point store.url elsewhere"
        )
    for statement in _V1:
        conn.execute(statement)


def _rekey(
    conn: sqlite3.Connection,
    table: str,
    keys: Sequence[str],
    norm: Callable[[dict[str, Any]], dict[str, Any]],
    better: Callable[[dict[str, Any], dict[str, Any]], bool],
) -> None:
    """Rewrite the rows of ``table`` whose normal form differs; where two
    rows meet under one key, the one ``better`` prefers stays."""
    rows = conn.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608 (fixed names)
    kept: dict[tuple[object, ...], dict[str, Any]] = {}
    changed = False
    for row in rows:
        new = norm(row)
        changed = changed or new != row
        k = tuple(new[c] for c in keys)
        if k not in kept or better(new, kept[k]):
            kept[k] = new
    if not changed:
        return
    conn.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)
    if kept:
        columns = list(next(iter(kept.values())))
        conn.executemany(
            f"INSERT INTO {table} ({', '.join(columns)})"  # noqa: S608 (fixed names)
            f" VALUES ({', '.join(':' + c for c in columns)})",
            list(kept.values()),
        )


def _lower(row: dict[str, Any], *columns: str) -> dict[str, Any]:
    return row | {c: key(str(row[c])) for c in columns}


def _v2(conn: sqlite3.Connection) -> None:
    """Version 2: one normal form for every stored address (addr.key), the
    entries' requeue_id and alerted_to, and entries found by queue file.

    Rows of version 1 written with mixed case are re-keyed; two rows that
    meet under one key keep the later forward, the unexpired-longer
    record, and the counted (H, R) or older entry. Held counters are
    derived from the entries (``count(*)``), so they agree at once."""
    conn.execute("ALTER TABLE held ADD COLUMN requeue_id TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE held ADD COLUMN alerted_to TEXT NOT NULL DEFAULT ''")
    conn.execute("CREATE INDEX held_by_queue ON held (host, queue_id)")
    _rekey(
        conn,
        "forwards",
        ("rcpt",),
        lambda r: _lower(r, "rcpt", "target"),
        lambda a, b: float(a["updated"]) > float(b["updated"]),
    )
    _rekey(
        conn,
        "messages",
        ("srs", "record_id"),
        lambda r: _lower(r, "srs", "rcpt", "target"),
        lambda a, b: float(a["expires"]) > float(b["expires"]),
    )
    _rekey(
        conn,
        "held",
        ("target", "entry_id"),
        lambda r: _lower(r, "target", "rcpt", "srs"),
        lambda a, b: (
            (a["state"] != "N", -float(a["held_at"])) > (b["state"] != "N", -float(b["held_at"]))
        ),
    )


# -- the recipient's web service (fwdweb): pending targets and web tokens -------------


def _add_web(conn: sqlite3.Connection) -> None:
    """Forwards get a pending target awaiting confirmation; web tokens (kept
    as SHA-256 digests) and rate counters get tables of their own."""
    conn.execute("ALTER TABLE forwards ADD COLUMN pending TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE forwards ADD COLUMN pending_expires REAL NOT NULL DEFAULT 0")
    conn.execute(
        """CREATE TABLE web_tokens (
            kind    TEXT NOT NULL,
            digest  TEXT NOT NULL,
            rcpt    TEXT NOT NULL,
            name    TEXT NOT NULL,
            data    TEXT NOT NULL,
            created REAL NOT NULL,
            expires REAL NOT NULL,
            PRIMARY KEY (kind, digest)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX web_tokens_by_rcpt ON web_tokens (rcpt, kind)")
    conn.execute(
        """CREATE TABLE web_rates (
            key     TEXT NOT NULL,
            start   REAL NOT NULL,
            hits    INTEGER NOT NULL,
            PRIMARY KEY (key, start)
        ) WITHOUT ROWID"""
    )


# -- version 4: the forwarding table grows up ------------------------------------


def _v4(conn: sqlite3.Connection) -> None:
    """Forwards get every target ("targets", one per line; "target" keeps
    the first), the recipient's SPF actions and sender rewrite, and its
    trusted forwarders. A one-target forward of version 3 becomes a forward
    with that one target."""
    for column in ("targets", "spf_actions", "rewrite", "trusted"):
        conn.execute(f"ALTER TABLE forwards ADD COLUMN {column} TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE forwards SET targets = target WHERE target != ''")


#: version -> the step to version + 1.
MIGRATIONS: Final[Mapping[int, Migration]] = {0: _create_v1, 1: _v2, 2: _add_web, 3: _v4}

#: Write transactions of import_items commit every this many items.
_IMPORT_BATCH: Final = 1000
#: record_messages deletes expired records every this many calls.
DEFAULT_PURGE_EVERY: Final = 1024

# SQLite's primary result codes (sqlite3.h), by what retrying can do.
_TEMPORARY_CODES: Final = frozenset(
    {
        2,  # INTERNAL
        4,  # ABORT
        5,  # BUSY: another process holds the lock longer than busy_timeout
        6,  # LOCKED
        7,  # NOMEM
        9,  # INTERRUPT
        10,  # IOERR
        13,  # FULL: the disk is full
        14,  # CANTOPEN
        15,  # PROTOCOL
        17,  # SCHEMA: changed under a prepared statement
    }
)


def translate_error(exc: sqlite3.Error, name: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    label = getattr(exc, "sqlite_errorname", type(exc).__name__)
    if code is None or (code & 0xFF) in _TEMPORARY_CODES:
        return StoreUnavailable(f"{name}: {label}: {exc}")
    advice = {
        8: "the file or its folder is read-only to this user: give the milter's user"
        " write access to both",  # READONLY
        11: _CORRUPT_ADVICE,  # CORRUPT
        26: "the file is not an SQLite database: move it away (a new one is created)"
        " or fix store.url",  # NOTADB
    }.get(code & 0xFF, "the database does not have the layout this fwdmilter expects")
    return StoreSchemaError(f"{name}: {label}: {exc}; {advice}")


_CORRUPT_ADVICE: Final = (
    "the database is corrupt: stop every fwdmilter and fwdctl using it, then restore"
    " a backup or try `sqlite3 FILE .recover`"
)


#: Every sqlite3 exception of a method becomes a store error.
_guarded = guarded_by(sqlite3.Error, translate_error)


class _Pool:
    """Open connections, each lent to one thread at a time."""

    def __init__(self, connect: Callable[[], sqlite3.Connection], keep: int = 8) -> None:
        self._connect = connect
        self._keep = keep
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise StoreUnavailable("the store is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                # An exception left a transaction open: never lend it so.
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
            with self._lock:
                keep = not self._closed and len(self._idle) < self._keep
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class SQLiteStore(Store):
    """The store in one SQLite file; opening it checks and migrates it.

    ``migrations`` and ``schema_version`` are for tests of the migration
    machinery; the defaults are this version's.
    """

    kind = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        purge_every: int = DEFAULT_PURGE_EVERY,
        migrations: Mapping[int, Migration] = MIGRATIONS,
        schema_version: int = SCHEMA_VERSION,
    ) -> None:
        self.path = Path(path)
        self.name = f"sqlite:{self.path}"
        self._timeout = timeout
        self._clock = clock
        self._purge_every = purge_every
        self._writes = 0
        self._count_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._prepare_file()
        self._pool = _Pool(self._connect)
        try:
            self._check_and_migrate(migrations, schema_version)
        except BaseException:
            self._pool.close()
            raise

    # -- opening -----------------------------------------------------------------

    def _refuse(self, what: str, todo: str) -> StoreSchemaError:
        return StoreSchemaError(f"{self.name}: {what}; {todo}")

    def _prepare_file(self) -> None:
        folder = self.path.parent
        if not folder.exists():
            try:
                # Not world-readable: the records name senders and recipients.
                folder.mkdir(mode=0o770, parents=True)
            except OSError as exc:
                raise self._refuse(
                    f"cannot create the folder {folder}: {exc.strerror}",
                    "create it, writable by the milter's user",
                ) from None
        if not folder.is_dir():
            raise self._refuse(f"{folder} is not a folder", "fix store.url")
        # SQLite writes its -wal and -shm files beside the database.
        if not os.access(folder, os.W_OK | os.X_OK, effective_ids=True):
            raise self._refuse(
                f"the folder {folder} is not writable by this user (uid {os.geteuid()})",
                "give the milter's user write access to it (chown or chmod)",
            )
        if self.path.exists():
            if not self.path.is_file():
                raise self._refuse("this is not a file", "fix store.url")
            if not os.access(self.path, os.R_OK | os.W_OK, effective_ids=True):
                raise self._refuse(
                    f"the file is not readable and writable by this user (uid {os.geteuid()})",
                    "give the milter's user read and write access to it (chown or chmod)",
                )
            return
        try:
            # 0660 less the umask: the milter's group (fwdctl) may share it.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o660)
        except FileExistsError:
            return  # another process created it just now
        except OSError as exc:
            raise self._refuse(
                f"cannot create the file: {exc.strerror}", "check the folder"
            ) from None
        os.close(fd)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self._timeout,
                isolation_level=None,  # we BEGIN ourselves
                check_same_thread=False,  # the pool lends it to one thread at a time
            )
        except sqlite3.Error as exc:
            raise translate_error(exc, self.name) from exc
        conn.row_factory = _dict_row
        try:
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            conn.close()
            raise translate_error(exc, self.name) from exc
        return conn

    def _check_and_migrate(self, migrations: Mapping[int, Migration], target: int) -> None:
        with self._pool.connection() as conn:
            try:
                version = int(_first(conn, "PRAGMA user_version"))
                if version > target:
                    raise self._newer(version, target)
                problems = [str(r["quick_check"]) for r in conn.execute("PRAGMA quick_check(5)")]
                mode = str(_first(conn, "PRAGMA journal_mode = WAL")) if problems == ["ok"] else ""
            except sqlite3.Error as exc:
                raise translate_error(exc, self.name) from exc
            if problems != ["ok"]:
                raise self._refuse("quick_check: " + " / ".join(problems), _CORRUPT_ADVICE)
            if mode.lower() != "wal":
                raise self._refuse(
                    f"cannot use the WAL journal (journal_mode is {mode})",
                    "put the file on a local file system",
                )
            if version < target:
                try:
                    self._migrate(conn, migrations, target)
                except sqlite3.Error as exc:
                    raise translate_error(exc, self.name) from exc

    def _newer(self, version: int, known: int) -> StoreSchemaError:
        return self._refuse(
            f"the database has schema version {version}, written by a newer fwdmilter;"
            f" this one knows version {known}",
            "upgrade fwdmilter on this host, or restore the file that this version wrote",
        )

    def _migrate(
        self, conn: sqlite3.Connection, migrations: Mapping[int, Migration], target: int
    ) -> None:
        """Every step from the file's version to ``target``, in one transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Read again under the write lock: another process may have
            # migrated the file since we looked.
            version = int(_first(conn, "PRAGMA user_version"))
            if version > target:
                raise self._newer(version, target)
            while version < target:
                step = migrations.get(version)
                if step is None:
                    raise self._refuse(
                        f"no migration from schema version {version}",
                        "use the fwdmilter version that wrote it to export the data",
                    )
                try:
                    step(conn)
                except StoreSchemaError as exc:
                    raise self._refuse(str(exc), "fix store.url") from None
                version += 1
            # user_version lives in the header, which the transaction covers.
            conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise

    # -- transactions ------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its start.

        The threads of this process take turns at a lock of their own first:
        SQLite's busy handler would make each waiting thread sleep and try
        again (1, 2, 5, 10 ... ms), while a lock hands the turn over as soon
        as the writer commits. Other processes still wait in busy_timeout.
        Waiting for the lock counts against the same ``store.timeout``."""
        if not self._write_lock.acquire(timeout=self._timeout):
            raise StoreUnavailable(
                f"{self.name}: another writer of this process held the store for {self._timeout:g}s"
            )
        try:
            with self._write_locked(durable) as conn:
                yield conn
        finally:
            self._write_lock.release()

    @contextlib.contextmanager
    def _write_locked(self, durable: bool) -> Iterator[sqlite3.Connection]:
        with self._pool.connection() as conn:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    conn.rollback()
                    raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous = NORMAL")

    def _rows(self, sql: str, params: Sequence[object] = ()) -> list[dict[str, Any]]:
        with self._pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    # -- the forwarding table ----------------------------------------------------

    @_guarded
    def get_forward(self, rcpt: str) -> Forward | None:
        rcpt = key(rcpt)
        rows = self._rows("SELECT * FROM forwards WHERE rcpt = ?", (rcpt,))
        return _codec.forward_from(rows[0], self._where("forwards", rcpt)) if rows else None

    @_guarded
    def put_forward(self, forward: Forward) -> None:
        if not forward.rcpt:
            raise ValueError("a forward needs a recipient")
        with self._write() as conn:
            _put_forward(conn, _codec.norm_forward(forward))

    @_guarded
    def delete_forward(self, rcpt: str, moved_to: str = "", now: float = 0.0) -> bool:
        rcpt = key(rcpt)
        with self._write() as conn:
            if moved_to:
                cur = conn.execute(
                    "UPDATE forwards SET target = '', targets = '', null_sender = 'forward',"
                    " spf_actions = '', rewrite = '', trusted = '', moved_to = ?,"
                    " updated = ?, pending = '', pending_expires = 0 WHERE rcpt = ?",
                    (moved_to, now, rcpt),
                )
            else:
                cur = conn.execute("DELETE FROM forwards WHERE rcpt = ?", (rcpt,))
            return cur.rowcount > 0

    @_guarded
    def list_forwards(self) -> list[Forward]:
        rows = self._rows("SELECT * FROM forwards ORDER BY rcpt")
        return [_codec.forward_from(r, self._where("forwards", r["rcpt"])) for r in rows]

    # -- the milter's hot path -----------------------------------------------------

    @_guarded
    def rcpt_info(self, rcpts: Sequence[str]) -> list[RcptInfo]:
        found: dict[str, RcptInfo] = {}
        keyed = [key(r) for r in rcpts]
        wanted = list(dict.fromkeys(keyed))
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            # Only "?" marks are formatted into this query.
            sql = (
                "SELECT f.*, (SELECT count(*) FROM held h WHERE h.target = f.target"  # noqa: S608
                " AND h.state IN ('H', 'R')) AS n"
                f" FROM forwards f WHERE f.rcpt IN ({marks})"
            )
            rows = self._rows(sql, chunk)
            more: dict[str, list[str]] = {}  # rcpt -> its targets after the first
            for row in rows:
                forward = _codec.forward_from(row, self._where("forwards", row["rcpt"]))
                found[forward.rcpt] = RcptInfo(forward, int(row["n"]) if forward.active else 0)
                if forward.active and len(forward.targets) > 1:
                    more[forward.rcpt] = list(forward.targets[1:])
            if more:
                # Several targets: the others' counts in one more query. One
                # target (the usual case) costs nothing more.
                counts = self._held_counts(t for ts in more.values() for t in ts)
                for rcpt, targets in more.items():
                    info = found[rcpt]
                    extra = sum(counts.get(t, 0) for t in targets)
                    found[rcpt] = RcptInfo(info.forward, info.held + extra)
        return [found.get(r, RcptInfo(None)) for r in keyed]

    def _held_counts(self, targets: Iterable[str]) -> dict[str, int]:
        """H and R entries of each of ``targets`` (those with none are absent)."""
        wanted = list(dict.fromkeys(targets))
        counts: dict[str, int] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT target, count(*) AS n FROM held"  # noqa: S608 (only "?" marks)
                f" WHERE state IN ('H', 'R') AND target IN ({marks}) GROUP BY target"
            )
            for row in self._rows(sql, chunk):
                counts[str(row["target"])] = int(row["n"])
        return counts

    @_guarded
    def record_messages(self, records: Sequence[MessageRecord], ttl: float) -> None:
        if not records:
            return
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        for r in records:
            if not r.srs or not r.record_id:
                raise ValueError("a message record needs srs and record_id")
            _codec.check_state(r.state)
        records = [_codec.norm_record(r) for r in records]
        now = self._clock()
        rows = []
        for r in records:
            fields: dict[str, object] = dict(_codec.record_fields(r))
            fields.update(created=r.created, expires=now + ttl)
            rows.append(fields)
        with self._count_lock:
            self._writes += 1
            purge = self._purge_every > 0 and self._writes % self._purge_every == 0
        with self._write() as conn:
            conn.executemany(_INSERT_MESSAGE, rows)
            if purge:
                # Expired records are invisible already; this gives the space back.
                conn.execute("DELETE FROM messages WHERE expires <= ?", (now,))

    @_guarded
    def messages(self, srs: str) -> list[MessageRecord]:
        srs = key(srs)
        rows = self._rows(
            "SELECT * FROM messages WHERE srs = ? AND expires > ? ORDER BY created, record_id",
            (srs, self._clock()),
        )
        return [_codec.record_from(r, self._where("messages", srs)) for r in rows]

    @_guarded
    def set_message_state(self, srs: str, record_id: str, state: MessageState) -> bool:
        _codec.check_state(state)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE messages SET state = ? WHERE srs = ? AND record_id = ? AND expires > ?",
                (state, key(srs), record_id, self._clock()),
            )
            return cur.rowcount > 0

    @_guarded
    def purge(self, now: float) -> int:
        with self._write() as conn:
            return conn.execute("DELETE FROM messages WHERE expires <= ?", (now,)).rowcount

    # -- held mail -----------------------------------------------------------------

    @_guarded
    def hold(self, entry: HeldEntry) -> bool:
        if entry.state not in ("H", "N"):
            raise ValueError(f"hold() takes an entry in state H or N, not {entry.state!r}")
        if not entry.target or not entry.entry_id:
            raise ValueError("a held entry needs target and entry_id")
        entry = _codec.norm_entry(entry)
        with self._write(durable=True) as conn:
            cur = conn.execute(
                _INSERT_HELD.replace("INSERT OR REPLACE", "INSERT OR IGNORE"), _held_row(entry)
            )
            return cur.rowcount > 0

    @_guarded
    def get_held(self, target: str, entry_id: str) -> HeldEntry | None:
        rows = self._rows(
            "SELECT * FROM held WHERE target = ? AND entry_id = ?", (key(target), entry_id)
        )
        return _codec.held_from(rows[0], self._where("held", target)) if rows else None

    @_guarded
    def held(self, target: str | None = None, domain: str | None = None) -> list[HeldEntry]:
        if target is not None:
            rows = self._rows(
                "SELECT * FROM held WHERE target = ? ORDER BY held_at, target, entry_id",
                (key(target),),
            )
        else:
            rows = self._rows("SELECT * FROM held ORDER BY held_at, target, entry_id")
        entries = [_codec.held_from(r, self._where("held", r["target"])) for r in rows]
        if domain is not None:
            wanted = domain.lower().rstrip(".")
            entries = [e for e in entries if domain_of(e.target) == wanted]
        return entries

    def _held_update(self, sql: str, params: Sequence[object]) -> bool:
        with self._write(durable=True) as conn:
            return conn.execute(sql, params).rowcount > 0

    @_guarded
    def mark_requeued(self, target: str, entry_id: str, now: float) -> bool:
        return self._held_update(
            "UPDATE held SET state = 'R', requeued_at = ?"
            " WHERE target = ? AND entry_id = ? AND state = 'H'",
            (now, key(target), entry_id),
        )

    @_guarded
    def rehold(
        self, target: str, entry_id: str, queue_id: str, host: str, reason: str, now: float
    ) -> bool:
        return self._held_update(
            "UPDATE held SET state = 'H', queue_id = ?, host = ?, reason = ?, held_at = ?,"
            " alerted = 0, alerted_to = '', requeue_id = ''"
            " WHERE target = ? AND entry_id = ? AND state = 'R'",
            (queue_id, host, reason, now, key(target), entry_id),
        )

    @_guarded
    def unrequeue(self, target: str, entry_id: str) -> bool:
        return self._held_update(
            "UPDATE held SET state = 'H', requeue_id = ''"
            " WHERE target = ? AND entry_id = ? AND state = 'R'",
            (key(target), entry_id),
        )

    @_guarded
    def set_requeue_id(
        self, target: str, entry_id: str, requeue_id: str, srs: str = "", msg_id: str = ""
    ) -> bool:
        return self._held_update(
            "UPDATE held SET requeue_id = ?,"
            " srs = CASE WHEN ? = '' THEN srs ELSE ? END,"
            " msg_id = CASE WHEN ? = '' THEN msg_id ELSE ? END"
            " WHERE target = ? AND entry_id = ? AND state = 'R'",
            (requeue_id, srs, key(srs), msg_id, msg_id, key(target), entry_id),
        )

    @_guarded
    def release(self, target: str, entry_id: str) -> bool:
        return self._held_update(
            "DELETE FROM held WHERE target = ? AND entry_id = ? AND state = 'R'",
            (key(target), entry_id),
        )

    @_guarded
    def drop(self, target: str, entry_id: str) -> bool:
        return self._held_update(
            "DELETE FROM held WHERE target = ? AND entry_id = ?", (key(target), entry_id)
        )

    @_guarded
    def mark_alerted(
        self, target: str, entry_id: str, told: Sequence[str] = (), *, complete: bool = True
    ) -> bool:
        target = key(target)
        with self._write(durable=True) as conn:
            row = conn.execute(
                "SELECT alerted_to FROM held WHERE target = ? AND entry_id = ?",
                (target, entry_id),
            ).fetchone()
            if row is None:
                return False
            known = _codec.split_addresses(str(row["alerted_to"]))
            merged = tuple(dict.fromkeys([*known, *(key(a) for a in told)]))
            conn.execute(
                "UPDATE held SET alerted = ?, alerted_to = ? WHERE target = ? AND entry_id = ?",
                (int(complete), _codec.join_addresses(merged), target, entry_id),
            )
            return True

    @_guarded
    def held_by_queue(self, host: str, queue_id: str) -> list[HeldEntry]:
        rows = self._rows(
            "SELECT * FROM held WHERE host = ? AND queue_id = ? ORDER BY held_at, target, entry_id",
            (host, queue_id),
        )
        return [_codec.held_from(r, self._where("held", r["target"])) for r in rows]

    @_guarded
    def held_counts(self, target: str) -> tuple[int, int]:
        rows = self._rows(
            "SELECT state, count(*) AS n FROM held WHERE target = ? GROUP BY state",
            (key(target),),
        )
        counts = {str(r["state"]): int(r["n"]) for r in rows}
        return counts.get("H", 0), counts.get("R", 0)

    # -- the recipient's web service (fwdweb) ------------------------------------

    @_guarded
    def put_token(self, token: WebToken) -> None:
        _codec.check_token_kind(token.kind)
        if not token.digest or not token.rcpt:
            raise ValueError("a web token needs digest and rcpt")
        row: dict[str, object] = dict(_codec.token_fields(token))
        row.update(created=token.created, expires=token.expires)
        with self._write() as conn:
            conn.execute(_INSERT_TOKEN, row)
            # Expired tokens are invisible already; this gives the space back.
            conn.execute(
                "DELETE FROM web_tokens WHERE expires > 0 AND expires <= ?", (self._clock(),)
            )

    @_guarded
    def get_token(self, kind: WebTokenKind, digest: str, now: float) -> WebToken | None:
        rows = self._rows(
            f"SELECT * FROM web_tokens WHERE {_LIVE_WEB_ROW}",  # noqa: S608 (fixed text)
            (kind, digest, now),
        )
        return _codec.token_from(rows[0], self._where("web_tokens", kind)) if rows else None

    @_guarded
    def take_token(self, kind: WebTokenKind, digest: str, now: float) -> WebToken | None:
        with self._write() as conn:
            row = conn.execute(
                f"DELETE FROM web_tokens WHERE {_LIVE_WEB_ROW} RETURNING *",  # noqa: S608
                (kind, digest, now),
            ).fetchone()
        return _codec.token_from(row, self._where("web_tokens", kind)) if row else None

    @_guarded
    def tokens(self, kind: WebTokenKind, rcpt: str, now: float) -> list[WebToken]:
        rows = self._rows(
            "SELECT * FROM web_tokens WHERE rcpt = ? AND kind = ?"
            " AND (expires = 0 OR expires > ?) ORDER BY created, digest",
            (rcpt, kind, now),
        )
        return [_codec.token_from(r, self._where("web_tokens", rcpt)) for r in rows]

    @_guarded
    def delete_tokens(self, kind: WebTokenKind, rcpt: str, name: str | None = None) -> int:
        with self._write() as conn:
            if name is None:
                cur = conn.execute(
                    "DELETE FROM web_tokens WHERE rcpt = ? AND kind = ?", (rcpt, kind)
                )
            else:
                cur = conn.execute(
                    "DELETE FROM web_tokens WHERE rcpt = ? AND kind = ? AND name = ?",
                    (rcpt, kind, name),
                )
            return cur.rowcount

    @_guarded
    def count_hit(self, key: str, window: float, now: float) -> int:
        if window <= 0:
            raise ValueError(f"window must be positive, not {window!r}")
        start = now - now % window
        with self._write() as conn:
            conn.execute("DELETE FROM web_rates WHERE start < ?", (now - 2 * window,))
            row = conn.execute(
                "INSERT INTO web_rates (key, start, hits) VALUES (?, ?, 1)"
                " ON CONFLICT (key, start) DO UPDATE SET hits = hits + 1 RETURNING hits",
                (key, start),
            ).fetchone()
        return int(row["hits"])

    # -- whole store ---------------------------------------------------------------

    @_guarded
    def stats(self) -> Stats:
        with self._pool.connection() as conn:
            conn.execute("BEGIN")  # one snapshot for every count
            fwd = conn.execute(
                "SELECT count(*) FILTER (WHERE moved_to = '' AND target != '') AS active,"
                " count(*) FILTER (WHERE moved_to != '') AS moved FROM forwards"
            ).fetchone()
            messages = {
                str(r["state"]): int(r["n"])
                for r in conn.execute(
                    "SELECT state, count(*) AS n FROM messages WHERE expires > ? GROUP BY state",
                    (self._clock(),),
                )
            }
            by_target: dict[str, list[int]] = {}
            policy_held = 0
            for r in conn.execute(
                "SELECT target, state, count(*) AS n FROM held"
                " GROUP BY target, state ORDER BY target"
            ):
                if r["state"] == "N":
                    policy_held += int(r["n"])
                    continue
                counts = by_target.setdefault(str(r["target"]), [0, 0])
                counts[0 if r["state"] == "H" else 1] = int(r["n"])
            conn.execute("COMMIT")
        return Stats(
            forwards=int(fwd["active"]),
            moved=int(fwd["moved"]),
            messages=messages,
            held={
                "H": sum(c[0] for c in by_target.values()),
                "R": sum(c[1] for c in by_target.values()),
                "N": policy_held,
            },
            held_by_target={t: (c[0], c[1]) for t, c in by_target.items()},
        )

    @_guarded
    def ping(self) -> None:
        self._rows("SELECT 1")

    def close(self) -> None:
        self._pool.close()

    # -- migration -------------------------------------------------------------------

    def export(self) -> Iterator[Forward | MessageRecord | HeldEntry]:
        items = self._export()
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except sqlite3.Error as exc:
                raise translate_error(exc, self.name) from exc
            yield item

    def _export(self) -> Iterator[Forward | MessageRecord | HeldEntry]:
        with self._pool.connection() as conn:
            conn.execute("BEGIN")  # one snapshot, however long the caller takes
            for row in conn.execute("SELECT * FROM forwards ORDER BY rcpt"):
                yield _codec.forward_from(row, self._where("forwards", row["rcpt"]))
            for row in conn.execute(
                "SELECT * FROM messages WHERE expires > ? ORDER BY srs, created, record_id",
                (self._clock(),),
            ):
                yield _codec.record_from(row, self._where("messages", row["srs"]))
            for row in conn.execute("SELECT * FROM held ORDER BY target, held_at, entry_id"):
                yield _codec.held_from(row, self._where("held", row["target"]))
            conn.execute("COMMIT")

    @_guarded
    def import_items(self, items: Iterable[Forward | MessageRecord | HeldEntry]) -> int:
        now = self._clock()
        stored = 0
        batch: list[Forward | MessageRecord | HeldEntry] = []
        for item in items:
            if isinstance(item, MessageRecord):
                if item.expires <= 0:
                    raise ValueError(f"message record {item.record_id!r} has no expiry")
                if item.expires <= now:
                    continue
            batch.append(item)
            if len(batch) >= _IMPORT_BATCH:
                stored += self._import_batch(batch)
                batch = []
        if batch:
            stored += self._import_batch(batch)
        return stored

    def _import_batch(self, batch: Sequence[Forward | MessageRecord | HeldEntry]) -> int:
        with self._write(durable=True) as conn:
            for item in batch:
                if isinstance(item, Forward):
                    _put_forward(conn, _codec.norm_forward(item))
                elif isinstance(item, MessageRecord):
                    item = _codec.norm_record(item)  # noqa: PLW2901 (the same item, keyed)
                    fields: dict[str, object] = dict(_codec.record_fields(item))
                    fields.update(created=item.created, expires=item.expires)
                    conn.execute(_INSERT_MESSAGE, fields)
                else:
                    conn.execute(_INSERT_HELD, _held_row(_codec.norm_entry(item)))
        return len(batch)

    def _where(self, table: str, key: str) -> str:
        return f"{self.name}: table {table}, {key!r}"


# Rows as dicts of SQLite's dynamic values (str, float, int, None).
def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row, strict=True)}


def _first(conn: sqlite3.Connection, sql: str) -> Any:
    """The first column of the first row of ``sql`` (a PRAGMA's value)."""
    row: dict[str, Any] = conn.execute(sql).fetchone()
    return next(iter(row.values()))


def _named_insert(table: str, fields: Sequence[str]) -> str:
    return (
        f"INSERT OR REPLACE INTO {table} ({', '.join(fields)})"  # noqa: S608 (fixed names)
        f" VALUES ({', '.join(':' + f for f in fields)})"
    )


_INSERT_FORWARD: Final = _named_insert("forwards", _codec.FORWARD_FIELDS)
_INSERT_MESSAGE: Final = _named_insert("messages", _codec.MESSAGE_FIELDS)
_INSERT_HELD: Final = _named_insert("held", _codec.HELD_FIELDS)
_LIVE_WEB_ROW: Final = "kind = ? AND digest = ? AND (expires = 0 OR expires > ?)"
_INSERT_TOKEN: Final = _named_insert("web_tokens", _codec.WEB_TOKEN_FIELDS)


def _put_forward(conn: sqlite3.Connection, forward: Forward) -> None:
    row: dict[str, object] = dict(_codec.forward_fields(forward))
    row.update(
        created=forward.created, updated=forward.updated, pending_expires=forward.pending_expires
    )
    conn.execute(_INSERT_FORWARD, row)


def _held_row(entry: HeldEntry) -> dict[str, object]:
    row: dict[str, object] = dict(_codec.held_fields(entry))
    row.update(held_at=entry.held_at, requeued_at=entry.requeued_at, alerted=int(entry.alerted))
    return row
