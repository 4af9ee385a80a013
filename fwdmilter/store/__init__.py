"""Opening the store that ``[store] url`` names.

    sqlite:///var/lib/fwdmilter/state.db               one host (the path is the URL's path)
    redis://[USER:PASSWORD@]HOST[:PORT][/DB]           a Redis server
    rediss://[USER:PASSWORD@]HOST[:PORT][/DB]          the same over TLS (store.tls_*)
    unix:///run/redis/redis.sock[?db=DB]               a Redis server's unix socket
    redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB]   the master Sentinel names
    redis+cluster://HOST:PORT[,HOST:PORT...]           a Redis Cluster (seed nodes)

``store.password_file`` holds a password that is not in the URL (the file's
first line). ``store.timeout`` bounds connecting and each reply. A URL or a
setting that cannot work is a :class:`~fwdmilter.errors.ConfigError` naming
the key; a store that cannot be reached is
:class:`~fwdmilter.errors.StoreUnavailable`; data this version must not
touch, or a server that refuses our credentials, is
:class:`~fwdmilter.errors.StoreSchemaError`.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable

from fwdmilter.config import StoreSettings
from fwdmilter.errors import ConfigError
from fwdmilter.store._url import describe_url
from fwdmilter.store.base import Store

__all__ = ["open_store", "describe_url"]

_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")


def open_store(
    settings: StoreSettings,
    *,
    instance: str = "",
    clock: Callable[[], float] = time.time,
) -> Store:
    """The store ``settings.url`` names, checked and ready for every thread.

    ``instance`` names this milter to a Redis server (``CLIENT LIST`` shows
    ``fwdmilter-INSTANCE``); ``clock`` is for tests. Open the store in the
    process that uses it, after any fork: SQLite connections must not cross
    a fork.
    """
    scheme = settings.url.partition("://")[0]
    if scheme == "sqlite":
        return _open_sqlite(settings, clock)
    if scheme in _REDIS_SCHEMES:
        # Imported here so that an SQLite site never loads redis-py.
        from fwdmilter.store.redis import open_redis  # noqa: PLC0415

        return open_redis(settings, instance=instance, clock=clock)
    raise ConfigError(
        f"store.url: unknown scheme {scheme!r} in {describe_url(settings.url)!r}"
        " (sqlite, " + ", ".join(_REDIS_SCHEMES) + ")"
    )


def _open_sqlite(settings: StoreSettings, clock: Callable[[], float]) -> Store:
    from fwdmilter.store.sqlite import SQLiteStore  # noqa: PLC0415

    parts = urllib.parse.urlsplit(settings.url)
    path = urllib.parse.unquote(parts.path)
    if parts.netloc not in ("", "localhost") or not path.startswith("/") or parts.query:
        raise ConfigError(
            "store.url: an SQLite URL is sqlite:///ABSOLUTE/PATH"
            f" (three slashes, no options), not {settings.url!r}"
        )
    for key in ("password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        if getattr(settings, key):
            raise ConfigError(f"store.{key}: only used with Redis URLs")
    return SQLiteStore(path, timeout=settings.timeout, clock=clock)
