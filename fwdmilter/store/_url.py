"""Store URLs: the parts the backends need, and a form safe to log."""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from fwdmilter.config import mask_url
from fwdmilter.errors import ConfigError

__all__ = ["StoreURL", "describe_url", "parse_nodes"]


#: The URL with its password masked, for messages and logs.
describe_url = mask_url


def parse_nodes(netloc: str, default_port: int) -> list[tuple[str, int]]:
    """``HOST:PORT,HOST:PORT...`` (IPv6 in brackets) as (host, port) pairs."""
    nodes: list[tuple[str, int]] = []
    for item in netloc.split(","):
        m = re.fullmatch(
            r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]/]+))(?::(?P<port>\d{1,5}))?", item
        )
        if m is None or not 0 < int(m["port"] or default_port) < 65536:
            raise ConfigError(f"store.url: {item!r} is not HOST:PORT")
        nodes.append((m["v6"] or m["host"], int(m["port"] or default_port)))
    return nodes


@dataclass(frozen=True, slots=True)
class StoreURL:
    """``SCHEME://[USER[:PASSWORD]@]HOSTS[/PATH]``, split without judging."""

    scheme: str
    username: str
    password: str
    hosts: str
    path: str  # without the leading slash

    @classmethod
    def parse(cls, url: str) -> StoreURL:
        scheme, _, rest = url.partition("://")
        netloc, _, path = rest.partition("/")
        creds, _, hosts = netloc.rpartition("@")
        user, _, password = creds.partition(":")
        return cls(
            scheme=scheme,
            username=urllib.parse.unquote(user),
            password=urllib.parse.unquote(password),
            hosts=hosts,
            path=path.partition("?")[0],
        )
