"""fwdmilter's configuration: frozen, typed settings read from TOML.

The key names below are a contract shared with the docs, the tests and the
admins' files (docs/configuration.md lists each with its type and default).
Loading refuses unknown sections and keys and every bad value with a
:class:`ConfigError` whose text starts with the key, e.g.
``spf.fail: must be one of 'reject', 'tempfail', 'accept', not 'bounce'``.

Reading the file is the only I/O here; the SRS secrets file is read by
:func:`fwdmilter.secrets.load_secrets` when the daemon starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from fwdmilter.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_STORE_URL",
    "Config",
    "ConfigError",
    "DNSSettings",
    "ForwardingSettings",
    "HeldSettings",
    "LoggingSettings",
    "MTASettings",
    "MetricsSettings",
    "MilterSettings",
    "SPFSettings",
    "SRSSettings",
    "StoreSettings",
    "TrustedSettings",
    "WebSettings",
    "load",
    "loads",
    "mask_url",
    "with_store_url",
]

DEFAULT_CONFIG_PATH: Final = "/etc/fwdmilter/fwdmilter.toml"
DEFAULT_STORE_URL: Final = "sqlite:///var/lib/fwdmilter/state.db"

SPFAction = Literal["reject", "tempfail", "accept"]
_SPF_ACTIONS: Final = ("reject", "tempfail", "accept")


def _check(fn: Callable[[Any], str | None]) -> dict[str, Any]:
    """Field metadata: ``fn(value)`` returns an error text, or None if good."""
    return {"check": fn}


def _one_of(*choices: str) -> dict[str, Any]:
    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return "must be one of " + ", ".join(repr(c) for c in choices) + f", not {value!r}"

    return _check(check)


def _at_least(low: float, high: float | None = None) -> dict[str, Any]:
    def check(value: Any) -> str | None:
        if value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f"at least {low}"
            return f"must be {span}, not {value!r}"
        return None

    return _check(check)


def _domain(value: Any) -> str | None:
    if not value or "@" in value or any(c.isspace() for c in value) or "=" in value:
        return f"must be a domain name, not {value!r}"
    return None


def _domains(value: Any) -> str | None:
    for item in value:
        if (err := _domain(item)) is not None:
            return err
    return None


def _address(value: Any) -> str | None:
    if value.count("@") < 1 or value.startswith("@") or value.endswith("@"):
        return f"must be a mail address, not {value!r}"
    return None


def _addresses(value: Any) -> str | None:
    for item in value:
        if (err := _address(item)) is not None:
            return err
    return None


def _networks(value: Any) -> str | None:
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"must be a list of networks in CIDR form, and {item!r} is not one"
    return None


def _ips(value: Any) -> str | None:
    for item in value:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            return f"must be a list of IP addresses, and {item!r} is not one"
    return None


def _milter_socket(value: Any) -> str | None:
    if value.startswith(("unix:", "local:")):
        if not value.split(":", 1)[1].startswith("/"):
            return f"must name an absolute path, as in 'unix:/run/fwdmilter/m.sock', not {value!r}"
        return None
    if value.startswith(("inet:", "inet6:")):
        port = value.split(":", 1)[1].partition("@")[0]
        if port.isdigit() and 0 < int(port) < 65536:
            return None
    return f"must be 'unix:PATH', 'inet:PORT@HOST' or 'inet6:PORT@HOST', not {value!r}"


def _host_port(value: Any) -> str | None:
    host, sep, port = value.rpartition(":")
    if sep and host and port.isdigit() and 0 < int(port) < 65536:
        return None
    return f"must be HOST:PORT, not {value!r}"


def _store_url(value: Any) -> str | None:
    schemes = (
        "sqlite://",
        "redis://",
        "rediss://",
        "unix://",
        "redis+sentinel://",
        "redis+cluster://",
    )
    if value.startswith(schemes):
        return None
    return "must be a store URL (" + ", ".join(s + "..." for s in schemes) + f"), not {value!r}"


def _octal_mode(value: Any) -> str | None:
    try:
        mode = int(value, 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        return f"must be an octal file mode such as '0660', not {value!r}"
    return None


def _fqdn() -> str:
    return socket.getfqdn()


def _instance(value: Any) -> str | None:
    # It is the first half of every held entry's id (INSTANCE/QUEUEID).
    if value == "" or (value.isprintable() and not any(c.isspace() or c == "/" for c in value)):
        return None
    return f"must be a name without spaces or '/', not {value!r}"


@dataclass(frozen=True, slots=True)
class MilterSettings:
    """[milter]: how the MTA reaches the milter."""

    socket: str = field(default="unix:/run/fwdmilter/milter.sock", metadata=_check(_milter_socket))
    #: Mode of a unix socket; the MTA's user must be able to write to it.
    socket_mode: str = field(default="0660", metadata=_check(_octal_mode))
    #: Seconds libmilter waits on the MTA before giving up a connection.
    timeout: int = field(default=600, metadata=_at_least(1))
    #: The authserv-id of Authentication-Results headers (RFC 8601 section 2.5)
    #: and the name in the loop-detection trace header; the host's FQDN by default.
    hostname: str = field(default_factory=_fqdn, metadata=_check(_domain))
    #: Mail carrying our trace header more often than this is a loop (554 5.4.6).
    loop_limit: int = field(default=2, metadata=_at_least(1, 100))
    #: Seconds SIGTERM waits for running transactions before the process exits.
    shutdown_timeout: float = field(default=30.0, metadata=_at_least(0.0))
    #: A stable name of this milter instance: the ``host`` of the entries it
    #: holds. Empty (the default): ``hostname``, so that entries held before
    #: this key existed keep matching.
    instance: str = field(default="", metadata=_check(_instance))

    def __post_init__(self) -> None:
        if not self.instance:
            object.__setattr__(self, "instance", self.hostname)


@dataclass(frozen=True, slots=True)
class SRSSettings:
    """[srs]: the Sender Rewriting Scheme."""

    domain: str = field(default="", metadata=_check(_domain))
    secrets_file: str = "/etc/fwdmilter/srs-secrets"
    hash_length: int = field(default=4, metadata=_at_least(1, 27))
    hash_min_length: int = field(default=4, metadata=_at_least(1, 27))
    max_age_days: int = field(default=21, metadata=_at_least(1, 1023))
    separator: str = field(default="=", metadata=_one_of("=", "+", "-"))
    #: The alphabet of the hash in new addresses; both are always reversed.
    hash_alphabet: str = field(default="base64", metadata=_one_of("base64", "base64url"))
    #: "always" rewrites every non-null sender outside our domains;
    #: "when-needed" keeps a sender whose SPF already permits outbound_ips.
    rewrite: str = field(default="always", metadata=_one_of("always", "when-needed"))
    #: The addresses this host sends forwarded mail from (for "when-needed").
    outbound_ips: tuple[str, ...] = field(default=(), metadata=_check(_ips))


@dataclass(frozen=True, slots=True)
class ForwardingSettings:
    """[forwarding]: which recipients the forwarding table owns."""

    domains: tuple[str, ...] = field(default=(), metadata=_check(_domains))
    #: New forwards wait for their target's confirmation (fwdctl forward set
    #: --confirm is the default); the web service always asks for it.
    confirm_targets: bool = False
    #: The most targets one forwarding address may have (forwardemail's
    #: default is 10); fwdctl and the web service refuse more.
    max_targets: int = field(default=10, metadata=_at_least(1, 1000))


@dataclass(frozen=True, slots=True)
class SPFSettings:
    """[spf]: the action taken for each SPF result (RFC 7208 section 2.6)."""

    fail: str = field(default="reject", metadata=_one_of(*_SPF_ACTIONS))
    softfail: str = field(default="accept", metadata=_one_of(*_SPF_ACTIONS))
    neutral: str = field(default="accept", metadata=_one_of(*_SPF_ACTIONS))
    none: str = field(default="accept", metadata=_one_of(*_SPF_ACTIONS))
    permerror: str = field(default="accept", metadata=_one_of(*_SPF_ACTIONS))
    temperror: str = field(default="tempfail", metadata=_one_of(*_SPF_ACTIONS))

    def action(self, result: str) -> str:
        """The action for an SPF result; "pass" is always accepted."""
        if result == "pass":
            return "accept"
        return typing.cast(str, getattr(self, result))


@dataclass(frozen=True, slots=True)
class DNSSettings:
    """[dns]: the resolver SPF uses. No nameservers: those of /etc/resolv.conf."""

    nameservers: tuple[str, ...] = field(default=(), metadata=_check(_ips))
    port: int = field(default=53, metadata=_at_least(1, 65535))
    #: Seconds for one whole SPF evaluation, all its lookups together.
    timeout: float = field(default=3.0, metadata=_at_least(0.1, 60.0))


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """[store]: where the forwarding table and all state live."""

    url: str = field(default=DEFAULT_STORE_URL, metadata=_check(_store_url))
    #: What the milter does when it cannot write a forwarded message's records
    #: at end of message: "tempfail" (451, the client retries) or "accept"
    #: (forward it unrecorded; a bounce for it then finds no record and is
    #: held, never sent). A lookup at RCPT cannot do without the store: a
    #: failure there is always 451.
    on_error: str = field(default="tempfail", metadata=_one_of("tempfail", "accept"))
    #: Prefix of every Redis key (and of nothing in SQLite).
    prefix: str = "fwdmilter"
    #: Seconds for one store operation, connecting included.
    timeout: float = field(default=2.0, metadata=_at_least(0.05, 60.0))
    #: Path of a file holding the Redis password, if not in the URL.
    password_file: str = ""
    #: TLS settings for rediss:// (paths; empty: the system's CA store).
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass(frozen=True, slots=True)
class MTASettings:
    """[mta]: the MTA whose queue holds held mail, and where fwdctl submits."""

    type: str = field(default="postfix", metadata=_one_of("postfix", "sendmail"))
    submit: str = field(default="127.0.0.1:25", metadata=_check(_host_port))
    submit_timeout: float = field(default=30.0, metadata=_at_least(1.0))
    postfix_config_dir: str = "/etc/postfix"
    #: Sendmail: the queue folder and the .cf file of the daemon.
    sendmail_queue_dir: str = "/var/spool/mqueue"
    sendmail_cf: str = "/etc/mail/sendmail.cf"
    #: Folder holding the MTA's tools (postsuper, sendmail...); empty: PATH.
    command_dir: str = ""


@dataclass(frozen=True, slots=True)
class TrustedSettings:
    """[trusted]: clients whose mail skips SPF (other forwarders, local submission)."""

    networks: tuple[str, ...] = field(
        default=("127.0.0.0/8", "::1/128"), metadata=_check(_networks)
    )


@dataclass(frozen=True, slots=True)
class HeldSettings:
    """[held]: mail that must not bounce to an unverified sender."""

    #: Who is told when mail is held (besides the recipient's alternate contact).
    alert_to: tuple[str, ...] = field(default=(), metadata=_check(_addresses))
    #: Envelope and From: sender of alerts; empty: the null sender with
    #: From: postmaster@srs.domain (RFC 3834 section 3.3 notices).
    alert_from: str = ""
    retention_days: int = field(default=30, metadata=_at_least(1, 3650))
    #: The most held entries (targets) one bounce may create: a bounce without
    #: our trace id is about every target that got mail under its SRS address.
    max_entries_per_bounce: int = field(default=10, metadata=_at_least(1, 1000))


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """[logging]"""

    level: str = field(default="info", metadata=_one_of("debug", "info", "warning", "error"))


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """[metrics]: an optional Prometheus endpoint; empty listen: none."""

    listen: str = field(default="", metadata=_check(lambda v: None if not v else _host_port(v)))


def _base_url(value: Any) -> str | None:
    if not value:
        return None
    if not value.startswith(("https://", "http://")) or any(c.isspace() for c in value):
        return f"must be an http:// or https:// URL, not {value!r}"
    return None


@dataclass(frozen=True, slots=True)
class WebSettings:
    """[web]: the recipients' web service, fwdmilter-web (docs/web.md)."""

    listen: str = field(default="127.0.0.1:8025", metadata=_check(_host_port))
    #: The URL the links in its mails start with (where a browser reaches it).
    base_url: str = field(default="", metadata=_check(_base_url))
    #: Envelope and From: sender of its mails; empty: postmaster@srs.domain.
    mail_from: str = ""
    #: Hours a confirmation link (and the pending target it confirms) lives.
    confirm_hours: float = field(default=72.0, metadata=_at_least(0.01, 24.0 * 30))
    #: Minutes a sign-in link lives.
    signin_minutes: float = field(default=30.0, metadata=_at_least(0.1, 24.0 * 60))
    #: Minutes a signed-in session lives.
    session_minutes: float = field(default=60.0, metadata=_at_least(1.0, 24.0 * 60 * 7))
    #: Sign-in mails per forwarding address per hour.
    signin_per_address: int = field(default=3, metadata=_at_least(1))
    #: Sign-in requests per client IP address per hour.
    signin_per_client: int = field(default=20, metadata=_at_least(1))
    #: API tokens a recipient may hold at once.
    max_api_tokens: int = field(default=10, metadata=_at_least(1, 1000))
    #: TLS without a reverse proxy: PEM certificate chain and key (both or neither).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: Proxies (IP addresses) whose X-Forwarded-For is believed for rate limits.
    trusted_proxies: tuple[str, ...] = field(default=("127.0.0.1",), metadata=_check(_ips))


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; each attribute is one TOML table."""

    milter: MilterSettings = field(default_factory=MilterSettings)
    srs: SRSSettings = field(default_factory=SRSSettings)
    forwarding: ForwardingSettings = field(default_factory=ForwardingSettings)
    spf: SPFSettings = field(default_factory=SPFSettings)
    dns: DNSSettings = field(default_factory=DNSSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    mta: MTASettings = field(default_factory=MTASettings)
    trusted: TrustedSettings = field(default_factory=TrustedSettings)
    held: HeldSettings = field(default_factory=HeldSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    web: WebSettings = field(default_factory=WebSettings)
    #: Where this configuration was read from ("" if from a string).
    path: str = ""
    #: The "section.key" names the text set (the others are defaults):
    #: what fwdctl forward show calls a "global" value rather than "default".
    file_keys: frozenset[str] = frozenset()

    def as_dict(self, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
        """The effective settings as TOML-shaped data (for --check-config)."""
        out: dict[str, dict[str, Any]] = {}
        for section in dataclasses.fields(self):
            if section.name in NOT_SECTIONS:
                continue
            values = dataclasses.asdict(getattr(self, section.name))
            if mask_secrets and section.name == "store":
                values["url"] = mask_url(values["url"])
            out[section.name] = {
                k: list(v) if isinstance(v, tuple) else v for k, v in values.items()
            }
        return out


def with_store_url(settings: StoreSettings, url: str) -> StoreSettings:
    """``settings`` with another URL (``fwdctl store migrate --to``), checked."""
    if (err := _store_url(url)) is not None:
        raise ConfigError(f"--to: {err}")
    return dataclasses.replace(settings, url=url)


def mask_url(url: str) -> str:
    """The URL with its password masked, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    creds, at, hosts = netloc.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = creds.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}{slash}{tail}"


#: The fields of Config that are not a TOML table.
NOT_SECTIONS: Final = frozenset({"path", "file_keys"})

_SECTIONS: Final[Mapping[str, type]] = {
    f.name: typing.get_type_hints(Config)[f.name]
    for f in dataclasses.fields(Config)
    if f.name not in NOT_SECTIONS
}


def _convert(key: str, hint: Any, value: Any) -> Any:
    """``value`` from TOML as the type ``hint``, or ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item_type, _) = typing.get_args(hint)
        if isinstance(value, str):
            value = [value]  # one address where a list is expected: be kind
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list, not {type(value).__name__}")
        return tuple(_convert(f"{key}[{i}]", item_type, v) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be a whole number, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string, not {value!r}")
        return value
    raise TypeError(f"no conversion for {hint!r}")  # a bug in this module


def _section(name: str, cls: type, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: must be a table ([{name}]), not {type(table).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{name}.{key}: unknown key (known in [{name}]: {known})")
        full = f"{name}.{key}"
        converted = _convert(full, hints[key], value)
        check = fields[key].metadata.get("check")
        if check is not None and (err := check(converted)) is not None:
            raise ConfigError(f"{full}: {err}")
        kwargs[key] = converted
    return cls(**kwargs)


def _cross_checks(cfg: Config) -> None:
    if not cfg.srs.domain:
        raise ConfigError("srs.domain: must be set: the domain of this forwarder's SRS addresses")
    if cfg.srs.hash_min_length > cfg.srs.hash_length:
        raise ConfigError(
            f"srs.hash_min_length: must not exceed srs.hash_length ({cfg.srs.hash_length}), "
            f"not {cfg.srs.hash_min_length}"
        )
    if cfg.srs.rewrite == "when-needed" and not cfg.srs.outbound_ips:
        raise ConfigError(
            "srs.outbound_ips: must list this host's outgoing addresses when srs.rewrite is "
            "'when-needed'"
        )


def _web_checks(cfg: Config) -> None:
    if bool(cfg.web.tls_cert_file) != bool(cfg.web.tls_key_file):
        raise ConfigError("web.tls_cert_file: needs web.tls_key_file too, and the reverse")


def loads(text: str, path: str = "") -> Config:
    """Parse a configuration from TOML text."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path or 'configuration'}: not valid TOML: {exc}") from None
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in _SECTIONS:
            known = ", ".join(sorted(_SECTIONS))
            raise ConfigError(f"{name}: unknown section (known: {known})")
        sections[name] = _section(name, _SECTIONS[name], table)
    keys = frozenset(f"{name}.{key}" for name, table in data.items() for key in table)
    cfg = Config(**sections, path=path, file_keys=keys)
    _cross_checks(cfg)
    _web_checks(cfg)
    return cfg


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the configuration file at ``path``, $FWDMILTER_CONFIG, or the default."""
    chosen = os.fspath(path) if path is not None else os.environ.get("FWDMILTER_CONFIG", "")
    chosen = chosen or DEFAULT_CONFIG_PATH
    try:
        text = Path(chosen).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read the configuration: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{chosen}: not UTF-8: {exc}") from None
    return loads(text, chosen)
