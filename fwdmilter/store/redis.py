"""The Redis backend: one store shared by every host of a site.

Keys (``P`` is ``store.prefix``; docs/redis.md shows them in redis-cli)::

    P:schema                          STRING  the layout's version
    P:forward:{RCPT}                  HASH    one forward, no TTL
    P:message:{SRS}:RECORD_ID         HASH    one message record, TTL = its ttl
    P:messages:{SRS}                  SET     record ids under SRS, TTL >= its newest record
    P:held:{TARGET}:ENTRY_ID          HASH    one held entry, no TTL (fwdctl expires them)
    P:held-index:{TARGET}             SET     the entry ids of TARGET
    P:held-count:{TARGET}             HASH    fields H and R: TARGET's counters
    P:web-token:KIND:{DIGEST}         HASH    a web token (fwdweb), TTL = its expiry
    P:web-tokens:{RCPT}:KIND          SET     the digests of RCPT's tokens of KIND
    P:web-rate:{KEY}:START            STRING  hits in the window from START, TTL 2 windows
    P:migrating                       STRING  held while one process migrates the layout

Every address in a key (RCPT, SRS, TARGET) and in the fields the store looks
up is in the normal form of :func:`fwdmilter.addr.key`: the store applies it
on every write and lookup. Schema version 1 kept addresses as given;
:meth:`RedisStore._migrate` re-keys such data and rebuilds every counter
from the entries when a newer fwdmilter first opens the store. Schema 4
gives a forward several targets: field ``targets`` (one per line), with
``target`` still holding the first.

The ``{...}`` part is a Redis Cluster hash tag: every key of one SRS address,
and every key of one target, lives in one slot, so the multi-key updates below
are atomic on a cluster too. A braced address containing ``}`` still works:
Redis takes the tag up to the first ``}``, which is the same for every key
built from that address.

Atomicity
---------
- Held transitions (hold, mark_requeued, rehold, release, drop, and
  import of held entries) are Lua scripts run with EVALSHA: the entry, the
  index and the counters of one target change together or not at all, and
  every script checks the entry's state first, so a transition that a lost
  reply made the caller repeat cannot count twice. Deleting a forward, and
  setting a field of a record or entry only if it still exists, are scripts
  too.
- ``record_messages`` is one MULTI/EXEC transaction (one round trip); on a
  cluster, one transaction per SRS address (each in its own slot).
- ``rcpt_info`` pipelines HGETALL of each forward with HMGET of the counters
  of the targets last seen for that recipient (an in-process cache,
  bounded); only a forward whose targets are not the cached ones costs a
  second trip.

Connections come from redis-py's thread-safe pools (never a
``single_connection_client``: libmilter calls from many threads). A pooled
connection found closed or holding unread data when it is taken is reconnected
by the pool; one that fails during a command is disconnected before it goes
back, so an outage never poisons the pool. Commands are not retried here
(a retry could double a write whose reply was lost); the milter answers 4xx
and the MTA retries the whole transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import redis
import redis.exceptions as rx
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

from fwdmilter.addr import domain_of
from fwdmilter.addr import key as _k
from fwdmilter.config import StoreSettings
from fwdmilter.errors import ConfigError, StoreError, StoreSchemaError, StoreUnavailable
from fwdmilter.store import _codec
from fwdmilter.store._guard import guarded_by
from fwdmilter.store._url import StoreURL, describe_url, parse_nodes
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

__all__ = ["RedisStore", "REDIS_ERRORS", "open_redis", "translate_error"]

log = logging.getLogger(__name__)


#: Every exception redis-py raises (RedisClusterException is not a RedisError).
REDIS_ERRORS: Final = (rx.RedisError, rx.RedisClusterException, OSError)

# First word of an error reply that says "not now" rather than "never".
_TEMPORARY_REPLIES: Final = frozenset(
    {
        "OOM",
        "MISCONF",
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "CLUSTERDOWN",
        "TRYAGAIN",
        "READONLY",
        "NOREPLICAS",
        "EXECABORT",
        "MOVED",
        "ASK",
    }
)

#: How many recipients' targets rcpt_info remembers (the steady-state budget).
DEFAULT_CACHE_SIZE: Final = 10_000
#: Keys read per SCAN and per pipeline when walking the whole store.
_BATCH: Final = 500


def translate_error(exc: BaseException, name: str) -> StoreError:
    """The store error for a redis-py exception: temporary or permanent."""
    if isinstance(exc, (rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError)):
        return StoreSchemaError(
            f"{name}: the server refuses our user, password or ACL: {exc}"
            " (check store.url, store.password_file and the user's ACL in docs/redis.md)"
        )
    if isinstance(exc, rx.ResponseError) and not isinstance(exc, rx.ClusterError):
        code = str(exc).split(" ", 1)[0]
        if code not in _TEMPORARY_REPLIES and not isinstance(
            exc, (rx.OutOfMemoryError, rx.ReadOnlyError, rx.TryAgainError, rx.ExecAbortError)
        ):
            return StoreSchemaError(
                f"{name}: the server refused a command: {exc}"
                " (a key of the wrong type under store.prefix, or Redis older than 7.0?)"
            )
    return StoreUnavailable(f"{name}: {type(exc).__name__}: {exc}")


#: Every redis-py exception of a method becomes a store error.
_guarded = guarded_by(REDIS_ERRORS, translate_error)


class _Script:
    """A Lua script run by its SHA1 (EVALSHA), loaded again if the server lost it."""

    def __init__(self, source: str) -> None:
        self.source = source
        # SHA1 is how Redis names scripts; it is not used for security here.
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


# A target's counter hash is deleted when both counts reach 0, so that
# SCAN of held-count keys lists exactly the targets that have held mail.
_TIDY: Final = """
local function tidy()
  local c = redis.call('HMGET', KEYS[3], 'H', 'R')
  if tonumber(c[1] or '0') == 0 and tonumber(c[2] or '0') == 0 then
    redis.call('DEL', KEYS[3])
  end
end
"""

# KEYS: entry, index, counters.  ARGV: entry_id, state, field, value, ...
# An N entry (null-sender mail held by policy) is listed, not counted.
_HOLD = _Script("""
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[2] == 'H' then
  redis.call('HINCRBY', KEYS[3], 'H', 1)
  redis.call('HSETNX', KEYS[3], 'R', 0)
end
return 1
""")

# KEYS: entry, index, counters.  ARGV: now
_MARK_REQUEUED = _Script("""
if redis.call('HGET', KEYS[1], 'state') ~= 'H' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'R', 'requeued_at', ARGV[1])
redis.call('HINCRBY', KEYS[3], 'H', -1)
redis.call('HINCRBY', KEYS[3], 'R', 1)
return 1
""")

# KEYS: entry, index, counters.  ARGV: queue_id, host, reason, now
_REHOLD = _Script("""
if redis.call('HGET', KEYS[1], 'state') ~= 'R' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'H', 'queue_id', ARGV[1], 'host', ARGV[2],
           'reason', ARGV[3], 'held_at', ARGV[4], 'alerted', '0', 'alerted_to', '',
           'requeue_id', '')
redis.call('HINCRBY', KEYS[3], 'R', -1)
redis.call('HINCRBY', KEYS[3], 'H', 1)
return 1
""")

# KEYS: entry, index, counters.  R -> H, keeping held_at and the alert marks.
_UNREQUEUE = _Script("""
if redis.call('HGET', KEYS[1], 'state') ~= 'R' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'H', 'requeue_id', '')
redis.call('HINCRBY', KEYS[3], 'R', -1)
redis.call('HINCRBY', KEYS[3], 'H', 1)
return 1
""")

# KEYS: entry.  ARGV: requeue_id, srs, msg_id ("" keeps the field).
_SET_REQUEUE_ID = _Script("""
if redis.call('HGET', KEYS[1], 'state') ~= 'R' then return 0 end
redis.call('HSET', KEYS[1], 'requeue_id', ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'srs', ARGV[2]) end
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'msg_id', ARGV[3]) end
return 1
""")

# KEYS: entry.  ARGV: complete ("1"/"0"), address...  Adds the addresses
# (one per line in alerted_to) once each.
_MARK_ALERTED = _Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local known = redis.call('HGET', KEYS[1], 'alerted_to') or ''
local seen, list = {}, {}
for a in string.gmatch(known, '[^\\n]+') do
  if not seen[a] then seen[a] = true; table.insert(list, a) end
end
for i = 2, #ARGV do
  local a = ARGV[i]
  if a ~= '' and not seen[a] then seen[a] = true; table.insert(list, a) end
end
redis.call('HSET', KEYS[1], 'alerted', ARGV[1], 'alerted_to', table.concat(list, '\\n'))
return 1
""")

# KEYS: counters.  ARGV: H, R.  Sets a target's counters (migration).
_SET_COUNTS = _Script("""
if tonumber(ARGV[1]) == 0 and tonumber(ARGV[2]) == 0 then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'H', ARGV[1], 'R', ARGV[2])
end
return 1
""")

# KEYS: entry, index, counters.  ARGV: entry_id
_RELEASE = _Script(
    _TIDY
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'R' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'R', -1)
tidy()
return 1
"""
)

# KEYS: entry, index, counters.  ARGV: entry_id
_DROP = _Script(
    _TIDY
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = redis.call('HGET', KEYS[1], 'state')
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
if state == 'H' or state == 'R' then redis.call('HINCRBY', KEYS[3], state, -1) end
tidy()
return 1
"""
)

# KEYS: entry, index, counters.  ARGV: entry_id, state, field, value, ...
# Replaces any entry of that id, moving its count to the new state.
_IMPORT_HELD = _Script(
    _TIDY
    + """
local old = redis.call('HGET', KEYS[1], 'state')
if old == 'H' or old == 'R' then redis.call('HINCRBY', KEYS[3], old, -1) end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[2] == 'H' or ARGV[2] == 'R' then
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
  redis.call('HSETNX', KEYS[3], 'H', 0)
  redis.call('HSETNX', KEYS[3], 'R', 0)
end
tidy()
return 1
"""
)

# KEYS: a forward.  ARGV: moved_to, now.  Deletes it, or turns it into a
# moved entry (keeping rcpt, contact and created).
_DELETE_FORWARD = _Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('HSET', KEYS[1], 'target', '', 'targets', '', 'null_sender', 'forward',
             'moved_to', ARGV[1], 'updated', ARGV[2], 'pending', '', 'pending_expires', '0.0',
             'spf_actions', '', 'rewrite', '', 'trusted', '')
end
return 1
""")

# KEYS: one hash.  ARGV: field, value, ...  Replaces the whole hash.
_REPLACE_HASH = _Script("""
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
""")

# KEYS: message, its address's set.  ARGV: record_id, ttl in ms, field, value, ...
_IMPORT_RECORD = _Script("""
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2], 'NX')
redis.call('PEXPIRE', KEYS[2], ARGV[2], 'GT')
return 1
""")

# KEYS: one hash.  ARGV: field, value.  Sets a field of a hash that exists
# (HSET keeps the key's TTL); creates nothing.
_SET_IF_EXISTS = _Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
""")

# KEYS: one web token.  ARGV: now.  Returns the token's fields and deletes
# it, if it is there and unexpired (single use: one caller gets it).
_TAKE_TOKEN = _Script("""
local t = redis.call('HGETALL', KEYS[1])
if #t == 0 then return {} end
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires'))
if expires ~= 0 and expires <= tonumber(ARGV[1]) then return {} end
redis.call('DEL', KEYS[1])
return t
""")

_SCRIPTS: Final = (
    _TAKE_TOKEN,
    _DELETE_FORWARD,
    _REPLACE_HASH,
    _IMPORT_RECORD,
    _HOLD,
    _MARK_REQUEUED,
    _REHOLD,
    _RELEASE,
    _DROP,
    _IMPORT_HELD,
    _SET_IF_EXISTS,
    _UNREQUEUE,
    _SET_REQUEUE_ID,
    _MARK_ALERTED,
    _SET_COUNTS,
)


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a SCAN pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisStore(Store):
    """The store in Redis (standalone, Sentinel-managed or Cluster).

    ``client`` is a redis-py client made with ``decode_responses=True``;
    building the store checks the schema version and loads the scripts.
    """

    kind = "redis"

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        prefix: str = "fwdmilter",
        name: str = "redis",
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
        closing: Sequence[Callable[[], object]] = (),
        migration_wait: float = 120.0,
    ) -> None:
        if not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"store.prefix must be non-empty without braces, not {prefix!r}")
        self.name = name
        #: Commands and pipelines sent so far (for tests and metrics).
        self.round_trips = 0
        # Any: redis-py's annotations cannot know that decode_responses=True
        # makes every reply a str.
        self._client: Any = client
        self._cluster = isinstance(client, RedisCluster)
        self._prefix = prefix
        self._clock = clock
        self._cache_size = cache_size
        # rcpt -> the targets last seen for it
        self._targets: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self._closing = [*closing, client.close]
        self._migration_wait = migration_wait
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- keys --------------------------------------------------------------------

    # Every key is built from the normal form of its address.

    def _forward_key(self, rcpt: str) -> str:
        return f"{self._prefix}:forward:{{{_k(rcpt)}}}"

    def _message_key(self, srs: str, record_id: str) -> str:
        return f"{self._prefix}:message:{{{_k(srs)}}}:{record_id}"

    def _messages_key(self, srs: str) -> str:
        return f"{self._prefix}:messages:{{{_k(srs)}}}"

    def _held_keys(self, target: str, entry_id: str) -> list[str]:
        """The keys a held transition touches: entry, index, counters."""
        p = self._prefix
        target = _k(target)
        return [
            f"{p}:held:{{{target}}}:{entry_id}",
            f"{p}:held-index:{{{target}}}",
            f"{p}:held-count:{{{target}}}",
        ]

    def _count_key(self, target: str) -> str:
        return f"{self._prefix}:held-count:{{{_k(target)}}}"

    def _index_key(self, target: str) -> str:
        return f"{self._prefix}:held-index:{{{_k(target)}}}"

    @property
    def schema_key(self) -> str:
        return f"{self._prefix}:schema"

    # -- plumbing ----------------------------------------------------------------

    def _trip(self, n: int = 1) -> None:
        with self._lock:
            self.round_trips += n

    def _pipeline(self, transaction: bool = False) -> Any:
        # redis-py's Pipeline and ClusterPipeline share this interface.
        return self._client.pipeline(transaction=transaction)

    def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str | float]) -> int:
        self._trip()
        try:
            return int(self._client.evalsha(script.sha, len(keys), *keys, *args))
        except rx.NoScriptError:
            # Restarted, flushed or failed-over server: load and run again.
            self._trip(2)
            self._client.script_load(script.source)
            return int(self._client.evalsha(script.sha, len(keys), *keys, *args))

    def _scan(self, kind: str) -> Iterator[str]:
        """Every key ``P:kind:*``, on every primary of a cluster."""
        pattern = f"{_glob_escape(self._prefix)}:{kind}:*"
        if self._cluster:
            for node in self._client.get_primaries():
                cursor = 0
                while True:
                    self._trip()
                    cursors, keys = self._client.scan(
                        cursor=cursor, match=pattern, count=_BATCH, target_nodes=node
                    )
                    yield from keys
                    cursor = cursors[node.name]
                    if cursor == 0:
                        break
        else:
            cursor = 0
            while True:
                self._trip()
                cursor, keys = self._client.scan(cursor=cursor, match=pattern, count=_BATCH)
                yield from keys
                if cursor == 0:
                    break

    def _tag(self, key: str, kind: str) -> str:
        """The address in the braces of a ``P:kind:{ADDRESS}`` key."""
        return key[len(self._prefix) + len(kind) + 3 : -1]

    def _hgetall_batched(self, keys: Iterable[str]) -> Iterator[tuple[str, dict[str, str]]]:
        """(key, hash) of each key that still exists, one pipeline per batch."""
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) >= _BATCH:
                yield from self._hgetall(batch)
                batch = []
        if batch:
            yield from self._hgetall(batch)

    def _hgetall(self, keys: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
        pipe = self._pipeline()
        for key in keys:
            pipe.hgetall(key)
        self._trip()
        for key, data in zip(keys, pipe.execute(), strict=True):
            if data:
                yield key, data

    @_guarded
    def _open(self) -> None:
        self._trip()
        raw = self._client.get(self.schema_key)
        if raw is None:
            self._trip(2)
            self._client.set(self.schema_key, SCHEMA_VERSION, nx=True)
            raw = self._client.get(self.schema_key)
        try:
            version = int(raw)
        except (TypeError, ValueError):
            raise StoreSchemaError(
                f"{self.name}: key {self.schema_key} holds {raw!r}, not a schema version:"
                " is store.prefix shared with something else?"
            ) from None
        if version > SCHEMA_VERSION:
            raise StoreSchemaError(
                f"{self.name}: the data under {self.prefix_desc} has schema version {version},"
                f" written by a newer fwdmilter; this one knows version {SCHEMA_VERSION}."
                " Upgrade fwdmilter on this host (or give it another store.prefix)."
            )
        # Loaded now so that the first mail does not pay for NOSCRIPT.
        for script in _SCRIPTS:
            self._trip()
            self._client.script_load(script.source)
        if version < SCHEMA_VERSION:
            # 1 -> 2 re-keys; 2 -> 3 (the web service's keys) rewrites
            # nothing; 3 -> 4 gives every forward its list of targets.
            self._migrate(version, self._migration_wait)

    # -- migrations from older versions -------------------------------------------

    @property
    def _migrating_key(self) -> str:
        return f"{self._prefix}:migrating"

    def _migrate(self, version: int, wait: float) -> None:
        """Version 1, 2 or 3 -> 4. From 1: every address in its normal form,
        counters rebuilt (the step to 3, the web service's keys, rewrites
        nothing). From every one of them: each forward gets its "targets"
        (its one "target"; schema 4 reads a forward without them the same
        way, so a forward a stopped older milter wrote late is still read
        right).

        One process migrates (it holds ``P:migrating``); another that opens
        the store meanwhile waits for the version to change. Each step is
        idempotent, so a migration cut short is finished by the next open.
        Stop the milters of every host before upgrading: a version-1 milter
        still running would go on writing addresses as given."""
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait
        while not self._client.set(self._migrating_key, token, nx=True, ex=600):
            time.sleep(0.2)
            if int(self._client.get(self.schema_key) or 0) >= SCHEMA_VERSION:
                return
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"{self.name}: another process has been migrating {self.prefix_desc}"
                    f" for {wait:.0f}s (key {self._migrating_key}): try again later"
                )
        try:
            if int(self._client.get(self.schema_key) or 0) >= SCHEMA_VERSION:
                return
            moved = 0
            if version == 1:
                moved = self._rekey_forwards() + self._rekey_records() + self._rekey_entries()
                self._rebuild_counters()
            filled = self._fill_targets()
            self._client.set(self.schema_key, SCHEMA_VERSION)
            log.warning(
                "store=%s migrated schema=%d->%d rekeyed=%d forwards=%d",
                self.name,
                version,
                SCHEMA_VERSION,
                moved,
                filled,
            )
        finally:
            if self._client.get(self._migrating_key) == token:
                self._client.delete(self._migrating_key)

    def _fill_targets(self) -> int:
        """Schema 4: "targets" beside each one-target forward's "target"."""
        filled = 0
        for name, data in list(self._hgetall_batched(self._scan("forward"))):
            if data.get("target") and not data.get("targets"):
                # HSETNX: a forward rewritten meanwhile keeps its own list.
                self._client.hsetnx(name, "targets", data["target"])
                filled += 1
        return filled

    def _rekey_forwards(self) -> int:
        moved = 0
        for old_key, data in list(self._hgetall_batched(self._scan("forward"))):
            f = _codec.forward_from(data, old_key)
            n = _codec.norm_forward(f)
            new_key = self._forward_key(n.rcpt)
            if new_key == old_key and n == f:
                continue
            have = self._client.hgetall(new_key) if new_key != old_key else {}
            if not have or _codec.forward_from(have, new_key).updated <= n.updated:
                self._eval(_REPLACE_HASH, [new_key], _flat(_codec.forward_fields(n)))
            if new_key != old_key:
                self._client.delete(old_key)
            moved += 1
        return moved

    def _rekey_records(self) -> int:
        moved = 0
        for old_key, data in list(self._hgetall_batched(self._scan("message"))):
            r = _codec.record_from(data, old_key)
            n = _codec.norm_record(r)
            new_key = self._message_key(n.srs, n.record_id)
            if new_key == old_key and n == r:
                continue
            ms = int(self._client.pttl(old_key))
            if ms > 0:
                args = [n.record_id, str(ms), *_flat(_codec.record_fields(n))]
                self._eval(_IMPORT_RECORD, [new_key, self._messages_key(n.srs)], args)
            if new_key != old_key:
                self._client.delete(old_key)
            moved += 1
        for index in list(self._scan("messages")):
            tag = self._tag(index, "messages")
            if tag != _k(tag):
                self._client.delete(index)  # its members are under the keyed set now
        return moved

    def _rekey_entries(self) -> int:
        moved = 0
        for old_key, data in list(self._hgetall_batched(self._scan("held"))):
            e = _codec.held_from(data, old_key)
            n = _codec.norm_entry(e)
            keys = self._held_keys(n.target, n.entry_id)
            if keys[0] == old_key and n == e:
                continue
            have = self._client.hgetall(keys[0]) if keys[0] != old_key else {}
            if have:
                other = _codec.held_from(have, keys[0])
                keep_other = (other.state != "N", -other.held_at) >= (n.state != "N", -n.held_at)
            else:
                keep_other = False
            if not keep_other:
                self._eval(_REPLACE_HASH, [keys[0]], _flat(_codec.held_fields(n)))
                self._client.sadd(keys[1], n.entry_id)
            if keys[0] != old_key:
                self._client.delete(old_key)
                self._client.srem(self._index_key_raw(e.target), e.entry_id)
            moved += 1
        return moved

    def _index_key_raw(self, target: str) -> str:
        """A version-1 index key: the target as it was written."""
        return f"{self._prefix}:held-index:{{{target}}}"

    def _rebuild_counters(self) -> None:
        counts: dict[str, list[int]] = {}
        for name, data in self._hgetall_batched(self._scan("held")):
            e = _codec.held_from(data, name)
            c = counts.setdefault(e.target, [0, 0])
            if e.state in ("H", "R"):
                c[0 if e.state == "H" else 1] += 1
        for index in list(self._scan("held-index")):
            tag = self._tag(index, "held-index")
            if tag not in counts:
                self._client.delete(index)
        for count_key in list(self._scan("held-count")):
            if self._tag(count_key, "held-count") not in counts:
                self._client.delete(count_key)
        for target, (h, r) in counts.items():
            self._eval(_SET_COUNTS, [self._count_key(target)], [str(h), str(r)])

    @property
    def prefix_desc(self) -> str:
        return f"prefix {self._prefix!r}"

    # -- the forwarding table ----------------------------------------------------

    @_guarded
    def get_forward(self, rcpt: str) -> Forward | None:
        self._trip()
        data = self._client.hgetall(self._forward_key(rcpt))
        return _codec.forward_from(data, self._forward_key(rcpt)) if data else None

    @_guarded
    def put_forward(self, forward: Forward) -> None:
        if not forward.rcpt:
            raise ValueError("a forward needs a recipient")
        forward = _codec.norm_forward(forward)
        name = self._forward_key(forward.rcpt)
        pipe = self._pipeline(transaction=True)
        pipe.delete(name)
        pipe.hset(name, mapping=_codec.forward_fields(forward))
        self._trip()
        pipe.execute()

    @_guarded
    def delete_forward(self, rcpt: str, moved_to: str = "", now: float = 0.0) -> bool:
        deleted = bool(
            self._eval(_DELETE_FORWARD, [self._forward_key(rcpt)], [moved_to, repr(float(now))])
        )
        with self._lock:
            self._targets.pop(_k(rcpt), None)
        return deleted

    @_guarded
    def list_forwards(self) -> list[Forward]:
        forwards = [
            _codec.forward_from(data, key)
            for key, data in self._hgetall_batched(self._scan("forward"))
        ]
        return sorted(forwards, key=lambda f: f.rcpt)

    # -- the milter's hot path -----------------------------------------------------

    @_guarded
    def rcpt_info(self, rcpts: Sequence[str]) -> list[RcptInfo]:
        if not rcpts:
            return []
        rcpts = [_k(r) for r in rcpts]
        with self._lock:
            cached = [self._targets.get(r, ()) for r in rcpts]
        pipe = self._pipeline()
        for rcpt, targets in zip(rcpts, cached, strict=True):
            pipe.hgetall(self._forward_key(rcpt))
            for target in targets:
                pipe.hmget(self._count_key(target), "H", "R")
        self._trip()
        replies = iter(pipe.execute())

        forwards: list[Forward | None] = []
        held: dict[int, int] = {}
        missing: dict[str, list[int]] = {}  # target -> indexes needing its counters
        for i, (rcpt, targets) in enumerate(zip(rcpts, cached, strict=True)):
            data = next(replies)
            counts = [next(replies) for _ in targets]
            forward = _codec.forward_from(data, self._forward_key(rcpt)) if data else None
            forwards.append(forward)
            if forward is None or not forward.active:
                continue
            if forward.targets == targets:
                held[i] = sum(_sum_counts(c) for c in counts)
            else:
                held[i] = 0
                for target in forward.targets:
                    missing.setdefault(target, []).append(i)
        if missing:
            pipe = self._pipeline()
            for target in missing:
                pipe.hmget(self._count_key(target), "H", "R")
            self._trip()
            for indexes, counts in zip(missing.values(), pipe.execute(), strict=True):
                for i in indexes:
                    held[i] += _sum_counts(counts)

        with self._lock:
            for rcpt, forward in zip(rcpts, forwards, strict=True):
                if forward is not None and forward.active:
                    self._targets[rcpt] = forward.targets
                    self._targets.move_to_end(rcpt)
                else:
                    self._targets.pop(rcpt, None)
            while len(self._targets) > self._cache_size:
                self._targets.popitem(last=False)
        return [RcptInfo(f, held.get(i, 0)) for i, f in enumerate(forwards)]

    @_guarded
    def record_messages(self, records: Sequence[MessageRecord], ttl: float) -> None:
        if not records:
            return
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl!r}")
        expires = self._clock() + ttl
        by_srs: dict[str, list[MessageRecord]] = {}
        for r in records:
            if not r.srs or not r.record_id:
                raise ValueError("a message record needs srs and record_id")
            _codec.check_state(r.state)
            r = _codec.norm_record(r)  # noqa: PLW2901 (the same record, keyed)
            by_srs.setdefault(r.srs, []).append(r)
        ms = max(1, round(ttl * 1000))
        if self._cluster and len(by_srs) > 1:
            # A cluster transaction holds the keys of one slot: one per address.
            for srs, group in by_srs.items():
                pipe = self._pipeline(transaction=True)
                self._queue_records(pipe, srs, group, ms, expires)
                self._trip()
                pipe.execute()
            return
        pipe = self._pipeline(transaction=True)
        for srs, group in by_srs.items():
            self._queue_records(pipe, srs, group, ms, expires)
        self._trip()
        pipe.execute()

    def _queue_records(
        self, pipe: Any, srs: str, records: Sequence[MessageRecord], ms: int, expires: float
    ) -> None:
        for r in records:
            name = self._message_key(srs, r.record_id)
            fields = _codec.record_fields(r)
            fields["expires"] = repr(expires)
            pipe.hset(name, mapping=fields)
            pipe.pexpire(name, ms)
        index = self._messages_key(srs)
        pipe.sadd(index, *(r.record_id for r in records))
        # NX gives a new set its TTL, GT lengthens an existing one; never shorter.
        pipe.pexpire(index, ms, nx=True)
        pipe.pexpire(index, ms, gt=True)

    @_guarded
    def messages(self, srs: str) -> list[MessageRecord]:
        index = self._messages_key(srs)
        self._trip()
        ids = sorted(self._client.smembers(index))
        if not ids:
            return []
        keys = [self._message_key(srs, i) for i in ids]
        found = dict(self._hgetall(keys))
        gone = [i for i, name in zip(ids, keys, strict=True) if name not in found]
        if gone:
            # Their hashes expired before the set did: forget them.
            self._trip()
            self._client.srem(index, *gone)
        records = [_codec.record_from(data, name) for name, data in found.items()]
        return sorted(records, key=lambda r: (r.created, r.record_id))

    @_guarded
    def set_message_state(self, srs: str, record_id: str, state: MessageState) -> bool:
        _codec.check_state(state)
        name = self._message_key(srs, record_id)
        return bool(self._eval(_SET_IF_EXISTS, [name], ["state", state]))

    def purge(self, now: float) -> int:
        """Nothing to do: Redis expires message records by their TTL."""
        return 0

    # -- held mail -----------------------------------------------------------------

    @_guarded
    def hold(self, entry: HeldEntry) -> bool:
        if entry.state not in ("H", "N"):
            raise ValueError(f"hold() takes an entry in state H or N, not {entry.state!r}")
        if not entry.target or not entry.entry_id:
            raise ValueError("a held entry needs target and entry_id")
        entry = _codec.norm_entry(entry)
        args: list[str] = [entry.entry_id, entry.state]
        for field, value in _codec.held_fields(entry).items():
            args += (field, value)
        return bool(self._eval(_HOLD, self._held_keys(entry.target, entry.entry_id), args))

    @_guarded
    def get_held(self, target: str, entry_id: str) -> HeldEntry | None:
        name = self._held_keys(target, entry_id)[0]
        self._trip()
        data = self._client.hgetall(name)
        return _codec.held_from(data, name) if data else None

    @_guarded
    def held(self, target: str | None = None, domain: str | None = None) -> list[HeldEntry]:
        if target is not None:
            targets = [_k(target)]
        else:
            targets = [self._tag(k, "held-index") for k in self._scan("held-index")]
        if domain is not None:
            wanted = domain.lower().rstrip(".")
            targets = [t for t in targets if domain_of(t) == wanted]
        entries: list[HeldEntry] = []
        for start in range(0, len(targets), _BATCH):
            chunk = targets[start : start + _BATCH]
            pipe = self._pipeline()
            for t in chunk:
                pipe.smembers(self._index_key(t))
            self._trip()
            keys = [
                self._held_keys(t, entry_id)[0]
                for t, ids in zip(chunk, pipe.execute(), strict=True)
                for entry_id in sorted(ids)
            ]
            entries += (_codec.held_from(d, k) for k, d in self._hgetall_batched(keys))
        return sorted(entries, key=lambda e: (e.held_at, e.target, e.entry_id))

    @_guarded
    def mark_requeued(self, target: str, entry_id: str, now: float) -> bool:
        keys = self._held_keys(target, entry_id)
        return bool(self._eval(_MARK_REQUEUED, keys, [repr(float(now))]))

    @_guarded
    def rehold(
        self, target: str, entry_id: str, queue_id: str, host: str, reason: str, now: float
    ) -> bool:
        keys = self._held_keys(target, entry_id)
        return bool(self._eval(_REHOLD, keys, [queue_id, host, reason, repr(float(now))]))

    @_guarded
    def unrequeue(self, target: str, entry_id: str) -> bool:
        return bool(self._eval(_UNREQUEUE, self._held_keys(target, entry_id), []))

    @_guarded
    def set_requeue_id(
        self, target: str, entry_id: str, requeue_id: str, srs: str = "", msg_id: str = ""
    ) -> bool:
        name = self._held_keys(target, entry_id)[0]
        return bool(
            self._eval(_SET_REQUEUE_ID, [name], [requeue_id, _k(srs) if srs else "", msg_id])
        )

    @_guarded
    def release(self, target: str, entry_id: str) -> bool:
        return bool(self._eval(_RELEASE, self._held_keys(target, entry_id), [entry_id]))

    @_guarded
    def drop(self, target: str, entry_id: str) -> bool:
        return bool(self._eval(_DROP, self._held_keys(target, entry_id), [entry_id]))

    @_guarded
    def mark_alerted(
        self, target: str, entry_id: str, told: Sequence[str] = (), *, complete: bool = True
    ) -> bool:
        name = self._held_keys(target, entry_id)[0]
        args = ["1" if complete else "0", *(_k(a) for a in told)]
        return bool(self._eval(_MARK_ALERTED, [name], args))

    @_guarded
    def held_by_queue(self, host: str, queue_id: str) -> list[HeldEntry]:
        # No index: an index keyed by queue file would live in another slot
        # than the entries (a Cluster could not update both atomically). This
        # is fwdctl's path, never the milter's: one SCAN of the held entries.
        found = [
            e
            for e in (_codec.held_from(d, k) for k, d in self._hgetall_batched(self._scan("held")))
            if e.host == host and e.queue_id == queue_id
        ]
        return sorted(found, key=lambda e: (e.held_at, e.target, e.entry_id))

    @_guarded
    def held_counts(self, target: str) -> tuple[int, int]:
        self._trip()
        h, r = self._client.hmget(self._count_key(target), "H", "R")
        return int(h or 0), int(r or 0)

    # -- whole store ---------------------------------------------------------------

    @_guarded
    def stats(self) -> Stats:
        forwards = moved = 0
        for _, data in self._hgetall_batched(self._scan("forward")):
            if data.get("moved_to"):
                moved += 1
            elif data.get("target"):
                forwards += 1
        messages: dict[str, int] = {}
        for _, data in self._hgetall_batched(self._scan("message")):
            state = data.get("state", "?")
            messages[state] = messages.get(state, 0) + 1
        by_target: dict[str, tuple[int, int]] = {}
        for key, data in self._hgetall_batched(self._scan("held-count")):
            counts = (int(data.get("H", 0)), int(data.get("R", 0)))
            if counts != (0, 0):
                by_target[self._tag(key, "held-count")] = counts
        held = {
            "H": sum(h for h, _ in by_target.values()),
            "R": sum(r for _, r in by_target.values()),
            "N": sum(
                1 for _, d in self._hgetall_batched(self._scan("held")) if d.get("state") == "N"
            ),
        }
        return Stats(
            forwards=forwards,
            moved=moved,
            messages=messages,
            held=held,
            held_by_target=dict(sorted(by_target.items())),
        )

    # -- the recipient's web service (fwdweb) ------------------------------------

    def _token_key(self, kind: str, digest: str) -> str:
        return f"{self._prefix}:web-token:{kind}:{{{digest}}}"

    def _tokens_key(self, rcpt: str, kind: str) -> str:
        return f"{self._prefix}:web-tokens:{{{rcpt}}}:{kind}"

    @_guarded
    def put_token(self, token: WebToken) -> None:
        _codec.check_token_kind(token.kind)
        if not token.digest or not token.rcpt:
            raise ValueError("a web token needs digest and rcpt")
        key = self._token_key(token.kind, token.digest)
        # The token and the index live in different slots on a cluster:
        # two commands, the index first (a stale index entry is harmless).
        self._trip(2)
        self._client.sadd(self._tokens_key(token.rcpt, token.kind), token.digest)
        pipe = self._pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=_codec.token_fields(token))
        if token.expires:
            # Relative to the store's clock, which tests inject.
            pipe.pexpire(key, max(1, int((token.expires - self._clock()) * 1000) + 1))
        pipe.execute()

    @_guarded
    def get_token(self, kind: WebTokenKind, digest: str, now: float) -> WebToken | None:
        key = self._token_key(kind, digest)
        self._trip()
        data = self._client.hgetall(key)
        if not data:
            return None
        token = _codec.token_from(data, key)
        return token if token.valid_at(now) else None

    @_guarded
    def take_token(self, kind: WebTokenKind, digest: str, now: float) -> WebToken | None:
        key = self._token_key(kind, digest)
        self._trip()
        try:
            flat = self._client.evalsha(_TAKE_TOKEN.sha, 1, key, repr(float(now)))
        except rx.NoScriptError:
            self._trip(2)
            self._client.script_load(_TAKE_TOKEN.source)
            flat = self._client.evalsha(_TAKE_TOKEN.sha, 1, key, repr(float(now)))
        if not flat:
            return None
        token = _codec.token_from(dict(zip(flat[::2], flat[1::2], strict=True)), key)
        self._trip()
        self._client.srem(self._tokens_key(token.rcpt, kind), digest)
        return token

    @_guarded
    def tokens(self, kind: WebTokenKind, rcpt: str, now: float) -> list[WebToken]:
        index = self._tokens_key(rcpt, kind)
        self._trip()
        digests = sorted(self._client.smembers(index))
        found: list[WebToken] = []
        gone: list[str] = []
        for digest in digests:
            key = self._token_key(kind, digest)
            self._trip()
            data = self._client.hgetall(key)
            if not data:
                gone.append(digest)
                continue
            token = _codec.token_from(data, key)
            if token.valid_at(now) and token.rcpt == rcpt:
                found.append(token)
        if gone:
            self._trip()
            self._client.srem(index, *gone)
        return sorted(found, key=lambda t: (t.created, t.digest))

    @_guarded
    def delete_tokens(self, kind: WebTokenKind, rcpt: str, name: str | None = None) -> int:
        index = self._tokens_key(rcpt, kind)
        removed = 0
        for token in self.tokens(kind, rcpt, self._clock()):
            if name is not None and token.name != name:
                continue
            self._trip(2)
            removed += int(self._client.delete(self._token_key(kind, token.digest)))
            self._client.srem(index, token.digest)
        return removed

    @_guarded
    def count_hit(self, key: str, window: float, now: float) -> int:
        if window <= 0:
            raise ValueError(f"window must be positive, not {window!r}")
        start = now - now % window
        rate_key = f"{self._prefix}:web-rate:{{{key}}}:{int(start)}"
        pipe = self._pipeline(transaction=True)
        pipe.incr(rate_key)
        pipe.pexpire(rate_key, int(2 * window * 1000))
        self._trip()
        hits, _ = pipe.execute()
        return int(hits)

    @_guarded
    def ping(self) -> None:
        self._trip()
        self._client.ping()

    def close(self) -> None:
        for close in self._closing:
            # Closing a client that lost its server must not fail shutdown.
            with contextlib.suppress(*REDIS_ERRORS):
                close()

    # -- migration -------------------------------------------------------------------

    def export(self) -> Iterator[Forward | MessageRecord | HeldEntry]:
        items = self._export()
        while True:
            try:
                item = next(items)
            except StopIteration:
                return
            except REDIS_ERRORS as exc:
                raise translate_error(exc, self.name) from exc
            yield item

    def _export(self) -> Iterator[Forward | MessageRecord | HeldEntry]:
        for key, data in self._hgetall_batched(self._scan("forward")):
            yield _codec.forward_from(data, key)
        for key, data in self._hgetall_batched(self._scan("message")):
            yield _codec.record_from(data, key)
        for key, data in self._hgetall_batched(self._scan("held")):
            yield _codec.held_from(data, key)

    @_guarded
    def import_items(self, items: Iterable[Forward | MessageRecord | HeldEntry]) -> int:
        # Each item is stored by one script (atomic on its own, so a copy cut
        # short never leaves a record without its TTL); the scripts go out in
        # pipelines of _BATCH, one round trip each.
        now = self._clock()
        stored = 0
        batch: list[tuple[_Script, list[str], list[str]]] = []
        for item in items:
            if isinstance(item, Forward):
                if not item.rcpt:
                    raise ValueError("a forward needs a recipient")
                item = _codec.norm_forward(item)  # noqa: PLW2901 (the same item, keyed)
                call = (
                    _REPLACE_HASH,
                    [self._forward_key(item.rcpt)],
                    _flat(_codec.forward_fields(item)),
                )
            elif isinstance(item, MessageRecord):
                if item.expires <= 0:
                    raise ValueError(f"message record {item.record_id!r} has no expiry")
                if item.expires <= now:
                    continue
                item = _codec.norm_record(item)  # noqa: PLW2901 (the same item, keyed)
                # A TTL relative to the store's clock, as record_messages sets
                # it, so that ``expires`` and the key's real expiry agree.
                ms = max(1, round((item.expires - now) * 1000))
                keys = [self._message_key(item.srs, item.record_id), self._messages_key(item.srs)]
                args = [item.record_id, str(ms), *_flat(_codec.record_fields(item))]
                call = (_IMPORT_RECORD, keys, args)
            else:
                item = _codec.norm_entry(item)  # noqa: PLW2901 (the same item, keyed)
                keys = self._held_keys(item.target, item.entry_id)
                args = [item.entry_id, item.state, *_flat(_codec.held_fields(item))]
                call = (_IMPORT_HELD, keys, args)
            batch.append(call)
            if len(batch) >= _BATCH:
                self._run_scripts(batch)
                batch = []
            stored += 1
        if batch:
            self._run_scripts(batch)
        return stored

    def _run_scripts(self, calls: Sequence[tuple[_Script, list[str], list[str]]]) -> None:
        """Many EVALSHA in one pipeline; all again if the server lost the scripts."""
        if self._cluster:
            # redis-py refuses EVALSHA in a cluster pipeline: one trip each.
            for script, keys, args in calls:
                self._eval(script, keys, args)
            return
        for attempt in range(2):
            pipe = self._pipeline()
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            self._trip()
            try:
                pipe.execute()
                return
            except rx.NoScriptError:
                if attempt:
                    raise
                # Every call replaces what it stores: running them again is safe.
                for script in _SCRIPTS:
                    self._trip()
                    self._client.script_load(script.source)


def _sum_counts(counts: Sequence[str | None]) -> int:
    return sum(int(c or 0) for c in counts)


# -- opening -----------------------------------------------------------------------


def open_redis(
    settings: StoreSettings, *, instance: str = "", clock: Callable[[], float] = time.time
) -> RedisStore:
    """The Redis store of a redis, rediss, unix, redis+sentinel or redis+cluster URL."""
    name = describe_url(settings.url)
    if not settings.prefix or "{" in settings.prefix or "}" in settings.prefix:
        raise ConfigError(
            f"store.prefix: must be non-empty and without braces, not {settings.prefix!r}"
        )
    url = StoreURL.parse(settings.url)
    options = _connection_options(settings, url, instance)
    try:
        if url.scheme in ("redis", "rediss", "unix"):
            if url.scheme != "unix" and not (url.path == "" or url.path.isdigit()):
                raise ConfigError(f"store.url: the path is the database number, not {name!r}")
            client = redis.Redis.from_url(settings.url, **options)
            return RedisStore(client, prefix=settings.prefix, name=name, clock=clock)
        if url.username:
            options["username"] = url.username
        if url.password:
            options["password"] = url.password
        if url.scheme == "redis+sentinel":
            return _open_sentinel(settings, url, options, name, clock)
        if url.path.strip("/") not in ("", "0"):
            raise ConfigError(f"store.url: a Redis Cluster has only database 0, not {name!r}")
        nodes = [
            ClusterNode(host, port)  # type: ignore[no-untyped-call]  # (redis-py)
            for host, port in parse_nodes(url.hosts, 6379)
        ]
        cluster = RedisCluster(startup_nodes=nodes, **options)
        return RedisStore(cluster, prefix=settings.prefix, name=name, clock=clock)
    except REDIS_ERRORS as exc:
        raise translate_error(exc, name) from exc
    except ValueError as exc:
        # redis-py's URL parser refuses what it cannot use.
        raise ConfigError(f"store.url: {exc}: {name!r}") from None


def _open_sentinel(
    settings: StoreSettings,
    url: StoreURL,
    options: dict[str, Any],
    name: str,
    clock: Callable[[], float],
) -> RedisStore:
    parts = [p for p in url.path.split("/") if p]
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise ConfigError(f"store.url: a Sentinel URL ends in /MASTER or /MASTER/DB, not {name!r}")
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # (redis-py)
        parse_nodes(url.hosts, 26379),
        # The sentinels' own connections: same timeouts, no credentials
        # (those in the URL are the data server's).
        sentinel_kwargs={
            "socket_timeout": settings.timeout,
            "socket_connect_timeout": settings.timeout,
            "retry": Retry(NoBackoff(), 0),
        },
        **options,
    )
    db = int(parts[1]) if len(parts) == 2 else 0
    client = sentinel.master_for(parts[0], db=db)  # type: ignore[no-untyped-call]
    closing = [s.close for s in sentinel.sentinels]
    return RedisStore(client, prefix=settings.prefix, name=name, clock=clock, closing=closing)


def _connection_options(settings: StoreSettings, url: StoreURL, instance: str) -> dict[str, Any]:
    """redis-py's keyword arguments for ``settings`` (checked)."""
    # No retries: a retried write whose reply was lost could apply twice, and
    # retries would stretch an outage past store.timeout. The pool reconnects
    # a connection found dead when it is taken, so the first command after
    # the server comes back works.
    options: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "retry": Retry(NoBackoff(), 0),
        "decode_responses": True,
        "client_name": _client_name(instance),
    }
    password = _read_password(settings)
    if password is not None:
        if url.password:
            raise ConfigError(
                "store.password_file: store.url has a password already; keep it in one place"
            )
        options["password"] = password
    tls = {
        "tls_ca_file": ("ssl_ca_certs", settings.tls_ca_file),
        "tls_cert_file": ("ssl_certfile", settings.tls_cert_file),
        "tls_key_file": ("ssl_keyfile", settings.tls_key_file),
    }
    for key, (option, file) in tls.items():
        if not file:
            continue
        if url.scheme != "rediss":
            raise ConfigError(f"store.{key}: only used with rediss:// URLs")
        try:
            Path(file).read_bytes()
        except OSError as exc:
            raise ConfigError(f"store.{key}: cannot read {file}: {exc.strerror}") from None
        options[option] = file
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ConfigError("store.tls_cert_file: needs store.tls_key_file too, and the reverse")
    return options


def _read_password(settings: StoreSettings) -> str | None:
    if not settings.password_file:
        return None
    try:
        text = Path(settings.password_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"store.password_file: cannot read {settings.password_file}: {exc.strerror}"
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"store.password_file: {settings.password_file} is not UTF-8") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ConfigError(f"store.password_file: {settings.password_file} is empty")
    return password


def _client_name(instance: str) -> str:
    # CLIENT SETNAME refuses spaces and newlines.
    safe = re.sub(r"[^A-Za-z0-9._@-]", "_", instance)
    return f"fwdmilter-{safe}" if safe else "fwdmilter"


def _flat(fields: dict[str, str]) -> list[str]:
    """field, value, field, value... for HSET in a script."""
    return [x for pair in fields.items() for x in pair]
