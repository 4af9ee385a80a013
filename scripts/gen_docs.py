#!/usr/bin/env python3
"""Generate the parts of the docs that the code decides, so they cannot drift.

    .venv/bin/python scripts/gen_docs.py          # rewrite them
    .venv/bin/python scripts/gen_docs.py --check  # exit 1 if any is stale

What it writes:

- docs/configuration.md, between its GENERATED markers: one table per
  section of fwdmilter/config.py with every key, its type, its default and
  the values it takes (the text of the error a bad value gets), and the
  meaning written in :data:`MEANINGS` below;
- docs/states.md, between its GENERATED markers: every SMTP reply of
  fwdmilter/replies.py with what it tells a sender (:data:`REPLY_MEANINGS`);
- docs/states.svg, rendered from docs/states.dot with Graphviz's ``dot``;
  its first comment records the SHA-256 of the source it was drawn from.

A key or reply without a meaning here, or a meaning for one that no longer
exists, is an error: adding a setting means documenting it.
tests/docs/test_docs_static.py runs ``--check``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import re
import subprocess
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fwdmilter import config, replies  # noqa: E402
from fwdmilter.replies import Reply  # noqa: E402

CONFIG_DOC: Final = ROOT / "docs" / "configuration.md"
STATES_DOC: Final = ROOT / "docs" / "states.md"
STATES_DOT: Final = ROOT / "docs" / "states.dot"
STATES_SVG: Final = ROOT / "docs" / "states.svg"

# -- configuration ---------------------------------------------------------------

#: What each key means, for an admin. Types, defaults and allowed values come
#: from fwdmilter/config.py itself.
MEANINGS: Final[dict[str, str]] = {
    "milter.socket": (
        "Where the MTA reaches the milter: `unix:PATH` (or `local:PATH`), `inet:PORT@HOST`"
        " or `inet6:PORT@HOST`. Postfix under Debian's chroot:"
        " `unix:/var/spool/postfix/fwdmilter/milter.sock` ([postfix.md](postfix.md))."
        " A unix socket is much faster than `inet:`. Takes a restart."
    ),
    "milter.socket_mode": (
        "File mode of a unix socket. The MTA's user (Postfix: through the folder's"
        " group) must be able to write to it. Takes a restart."
    ),
    "milter.timeout": (
        "Seconds libmilter waits for the MTA's next command on a connection before it"
        " gives the connection up. Takes a restart."
    ),
    "milter.hostname": (
        "This host's name. It is the authserv-id of the `Authentication-Results` header"
        " the milter adds (headers that arrive claiming it are removed), the `by=` of"
        " its `Fwdmilter-Trace` header, the HELO name of the mail `fwdctl` and the alerts"
        " submit, and the default of `milter.instance` (the name held entries carry)."
        " Hosts sharing a store need different names."
    ),
    "milter.instance": (
        "A stable name for this milter instance, set once per host: the `host` of the"
        " held entries it creates and the first half of their ids (`INSTANCE/QUEUEID`)."
        " `fwdctl held` acts on this instance's entries unless given `--instance NAME`,"
        " which lets an admin list, requeue, drop and expire the entries of a host that was"
        " renamed or no longer runs. By default it is `milter.hostname`, so that entries"
        " held before this key existed keep matching; set it before renaming a host."
        " Hosts sharing a store need different instances."
    ),
    "milter.loop_limit": (
        "A message that arrives carrying more of this forwarder's `Fwdmilter-Trace`"
        " headers than this is a loop, refused with `554 5.4.6`."
    ),
    "milter.shutdown_timeout": (
        "Seconds SIGTERM waits for running transactions to finish before the process"
        " exits. Keep it below systemd's `TimeoutStopSec` (60 s in fwdmilter.service)."
    ),
    "srs.domain": (
        "**Required.** The domain of every SRS address this host makes. Its MX must be"
        " this host (bounces come back here) and its SPF record must allow this host's"
        " outgoing addresses ([postfix.md](postfix.md#dns-records)). Make it one of"
        " `forwarding.domains` too."
    ),
    "srs.secrets_file": (
        "The SRS secrets, one per line, newest first: the first line signs new"
        " addresses, every line verifies. Refused if everyone may read it. Read again"
        " on SIGHUP ([operations.md](operations.md#srs-secrets))."
    ),
    "srs.hash_length": (
        "Characters of the signature in new SRS addresses (4, as Mail::SRS and postsrsd make them)."
    ),
    "srs.hash_min_length": (
        "Fewest signature characters a bounce address may have and still be accepted;"
        " at most `srs.hash_length`."
    ),
    "srs.max_age_days": (
        "Days an SRS address stays valid for bounces (a bounce to an older one is"
        " refused with `550 5.7.1`), and days the milter keeps the record of each"
        " forwarded message."
    ),
    "srs.separator": "The character after `SRS0` and `SRS1` in new addresses.",
    "srs.hash_alphabet": (
        "The alphabet of the hash in new addresses. `base64` writes what Mail::SRS and"
        " postsrsd 1 write (`+` and `/` may appear); `base64url` what postsrsd 2.3 and later"
        " write (`-` and `_` instead), for receivers that refuse `/` in a local part."
        " Addresses of either alphabet are reversed whatever this says, so a site moving"
        " from postsrsd 2, or between the two, keeps reversing the bounces of the addresses"
        " it issued."
    ),
    "srs.rewrite": (
        "`always`: every forwarded message gets an SRS sender (except the null sender and"
        " senders in this host's own domains). `when-needed`: a sender whose SPF record"
        " already allows every address of `srs.outbound_ips` keeps its address. A"
        " forwarding address may choose otherwise (its own `rewrite`, see Policy per"
        " recipient below); unverified (U) mail is always rewritten."
    ),
    "srs.outbound_ips": (
        "The addresses this host sends forwarded mail from. Required with"
        ' `srs.rewrite = "when-needed"`, unused otherwise.'
    ),
    "forwarding.domains": (
        "The recipient domains the forwarding table owns: an address there that is not"
        " in the table (`fwdctl forward set`) is refused with `550 5.1.1`. Senders in"
        " these domains and in `srs.domain` are never rewritten."
    ),
    "forwarding.confirm_targets": (
        "New forwards wait until their target confirms them from a mailed link"
        " (`fwdctl forward set --confirm` becomes the default; `--no-confirm` overrides)."
        " Needs `web.base_url` and a running fwdmilter-web ([web.md](web.md))."
    ),
    "forwarding.max_targets": (
        "The most targets one forwarding address may have (forwardemail's default is"
        " 10). `fwdctl forward set`, `add-target` and `import` and the web service refuse"
        " more; an address that has more (set when the limit was higher) keeps them."
    ),
    "spf.fail": (
        "What to do with mail whose SPF result is `fail`: `reject` (`550 5.7.23`),"
        " `tempfail` (`451 4.7.24`) or `accept` (the message is U). Given at each RCPT"
        " TO, for recipients without an action of their own."
    ),
    "spf.softfail": "The same, for `softfail`.",
    "spf.neutral": "The same, for `neutral`.",
    "spf.none": "The same, for `none` (no SPF record).",
    "spf.permerror": (
        "The same, for `permerror` (a broken SPF record); `reject` answers `550 5.7.24`."
    ),
    "spf.temperror": (
        "The same, for `temperror` (DNS did not answer); `tempfail` lets the client try"
        " again later."
    ),
    "dns.nameservers": (
        "The resolvers SPF asks. Empty: those of `/etc/resolv.conf`. A local caching"
        " resolver keeps SPF fast."
    ),
    "dns.port": "Their port.",
    "dns.timeout": (
        "Seconds for one whole SPF evaluation, every lookup together; past it the result"
        " is `temperror` (see `spf.temperror`)."
    ),
    "store.url": (
        "Where the forwarding table and all state live: `sqlite:///PATH` for one host,"
        " or a Redis URL (`redis://`, `rediss://`, `unix://`, `redis+sentinel://`,"
        " `redis+cluster://`: [redis.md](redis.md#urls)) to share it between hosts."
    ),
    "store.on_error": (
        "What the milter does when it cannot write a forwarded message's record at the"
        " end of the message: `tempfail` answers `451 4.3.0`; `accept` forwards the"
        " message without a record (a bounce for it will then be held). A store that"
        " cannot be read at RCPT is `451 4.3.0` either way."
    ),
    "store.prefix": (
        "Prefix of every Redis key; several sites may share one Redis with different prefixes."
    ),
    "store.timeout": (
        "Seconds one store operation may take, connecting included (SQLite: waiting for"
        " another process's write lock). Past it the milter answers `451 4.3.0`."
    ),
    "store.password_file": (
        "File whose first line is the Redis password, when it is not in the URL."
    ),
    "store.tls_ca_file": (
        "`rediss://`: the CA certificates to check the server with; empty: the system's."
    ),
    "store.tls_cert_file": "`rediss://`: the client certificate, if the server asks for one.",
    "store.tls_key_file": "`rediss://`: the client certificate's key.",
    "mta.type": (
        "The MTA whose queue keeps held mail: `postfix`, or `sendmail`"
        " ([sendmail.md](sendmail.md))."
    ),
    "mta.submit": (
        "Where `fwdctl held requeue` and the alerts submit mail, by SMTP: this host's"
        " MTA, from an address in `trusted.networks`."
    ),
    "mta.submit_timeout": "Seconds one such submission may take.",
    "mta.postfix_config_dir": (
        "The Postfix instance whose hold queue fwdctl reads and deletes from"
        " (`postqueue`, `postcat` and `postsuper -c`)."
    ),
    "mta.sendmail_queue_dir": "Sendmail's queue folder.",
    "mta.sendmail_cf": "Sendmail's configuration file.",
    "mta.command_dir": "The folder of the MTA's tools (`postsuper`...); empty: the `PATH`.",
    "trusted.networks": (
        "Clients whose mail is not SPF-checked. Keep loopback in it: `fwdctl held"
        " requeue` and the alerts submit from here, with senders that would fail SPF"
        " from 127.0.0.1. Mail from these clients is U unless the client authenticated."
        " A forwarding address may trust forwarders of its own (Policy per recipient)."
    ),
    "held.alert_to": (
        "Who is told when a bounce is held, besides the forwarding address's alternate"
        " contact (`fwdctl forward set --contact`). An address in a forwarding domain"
        " must be in the forwarding table."
    ),
    "held.alert_from": (
        "Envelope sender and `From:` of alerts. Empty: the null sender, with `From:`"
        " `postmaster@` the SRS domain (RFC 3834: automatic notices get no replies)."
    ),
    "held.retention_days": (
        "Days held mail waits for `fwdctl held requeue`; then `fwdctl held expire` (the"
        " daily timer) discards it and tells the alternate contact."
    ),
    "held.max_entries_per_bounce": (
        "The most held entries one failure bounce creates. A bounce that does not carry"
        " the milter's trace header is about every target that got mail from that sender"
        " that day (one SRS address); beyond this many, the bounce is still held, and the"
        " log line says how many targets were left out (`capped=`)."
    ),
    "logging.level": "`debug`, `info` (one line per decision), `warning` or `error`.",
    "metrics.listen": (
        "`HOST:PORT` of a Prometheus endpoint (needs the `metrics` extra); empty: none"
        " ([operations.md](operations.md#metrics))."
    ),
    "web.listen": (
        "`HOST:PORT` where fwdmilter-web listens; keep it on loopback behind a reverse"
        " proxy ([web.md](web.md#tls-and-the-reverse-proxy)). Takes a restart."
    ),
    "web.base_url": (
        "The URL a recipient's browser reaches the web service at (`https://fwd.example.net`):"
        " every link the service mails starts with it, and an `https://` URL makes its"
        " cookies `Secure`. Must be set for `fwdmilter-web` and `--confirm`."
    ),
    "web.mail_from": (
        "Envelope and `From:` sender of the service's mails; empty: `postmaster@` the SRS domain."
    ),
    "web.confirm_hours": (
        "How long a confirmation link, and the pending target it confirms, stays valid."
        " After it the pending target is dropped (a forward with no other target then"
        " refuses mail with `550 5.2.1`)."
    ),
    "web.signin_minutes": "How long a mailed sign-in link stays valid (it works once).",
    "web.session_minutes": "How long a browser stays signed in after using a sign-in link.",
    "web.signin_per_address": (
        "Sign-in mails sent per forwarding address per hour; more requests are answered"
        " the same and send nothing (nobody can mail-bomb a target through the service)."
    ),
    "web.signin_per_client": (
        "Sign-in requests taken per client IP address per hour; more get `429`."
    ),
    "web.max_api_tokens": "API tokens one recipient may hold at once.",
    "web.tls_cert_file": (
        "PEM certificate chain for serving HTTPS directly; empty: plain HTTP behind a"
        " reverse proxy that does TLS."
    ),
    "web.tls_key_file": "The private key of `web.tls_cert_file`.",
    "web.trusted_proxies": (
        "Addresses of reverse proxies whose `X-Forwarded-For` header names the client"
        " (for the per-client rate limit)."
    ),
}

_TYPE_NAMES: Final[dict[Any, str]] = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    tuple[str, ...]: "list of strings",
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


_BAD: Final[dict[Any, Any]] = {
    str: "\x00 bad",
    bool: None,
    int: -(10**9),
    float: -1e9,
    tuple[str, ...]: ("\x00 bad",),
}


def _values(field: dataclasses.Field[Any], hint: Any) -> str:
    """What the key accepts, in the words of the error a bad value gets."""
    check: Callable[[Any], str | None] | None = field.metadata.get("check")
    if check is None:
        return ""
    error = check(_BAD[hint])
    if error is None:
        return ""
    text = re.split(r", not |, and ", error)[0]
    text = text.removeprefix("must be ")
    return text.replace("|", "\\|")


def _default(section: str, field: dataclasses.Field[Any]) -> str:
    if (section, field.name) == ("milter", "instance"):
        return "the value of `milter.hostname`"
    if field.default is not dataclasses.MISSING:
        return "`" + _toml(field.default) + "`" if field.default != "" else '`""`'
    if field.name == "hostname":
        return "the host's FQDN"
    factory = field.default_factory
    if factory is not dataclasses.MISSING:
        return "`" + _toml(factory()) + "`"
    return ""


def config_reference() -> str:
    """The reference tables of docs/configuration.md."""
    hints = typing.get_type_hints(config.Config)
    out: list[str] = []
    seen: set[str] = set()
    for section in dataclasses.fields(config.Config):
        if section.name in config.NOT_SECTIONS:
            continue
        cls = hints[section.name]
        doc = (cls.__doc__ or "").strip()
        summary = doc.split(":", 1)[1].strip() if ":" in doc else ""
        out.append(f"### [{section.name}]\n")
        if summary:
            out.append(summary[0].upper() + summary[1:] + "\n")
        out.append("| key | type | default | values | meaning |")
        out.append("|---|---|---|---|---|")
        field_hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            key = f"{section.name}.{field.name}"
            seen.add(key)
            if key not in MEANINGS:
                raise SystemExit(f"gen_docs: {key} has no meaning in MEANINGS: document it")
            hint = field_hints[field.name]
            out.append(
                f"| `{field.name}` | {_TYPE_NAMES[hint]} | {_default(section.name, field)} | "
                f"{_values(field, hint)} | {MEANINGS[key]} |"
            )
        out.append("")
    stale = sorted(set(MEANINGS) - seen)
    if stale:
        raise SystemExit(f"gen_docs: MEANINGS names keys config.py does not have: {stale}")
    return "\n".join(out).rstrip() + "\n"


# -- replies ------------------------------------------------------------------------

#: When each reply is given, and what the sender (or its MTA) should make of it.
REPLY_MEANINGS: Final[dict[str, str]] = {
    "SPF_FAIL": (
        'RCPT (the SPF verdict, per recipient), SPF `fail` with `spf.fail = "reject"` or'
        " the recipient's own `fail` action: the sender's domain says this client may not"
        " send its mail. Send from a server the domain's SPF record lists."
    ),
    "SPF_SOFTFAIL": (
        'RCPT, SPF `softfail`, if `spf.softfail = "reject"` or the recipient refuses it.'
    ),
    "SPF_NEUTRAL": 'RCPT, SPF `neutral`, if `spf.neutral = "reject"` or the recipient refuses it.',
    "SPF_NONE": 'RCPT, no SPF record, if `spf.none = "reject"` or the recipient refuses it.',
    "SPF_PERMERROR": (
        "RCPT, the sender domain's SPF record is broken (`spf.permerror ="
        ' "reject"`): its admin must fix the record. Also a `temperror` set to `reject`.'
    ),
    "SPF_TEMPERROR": (
        'RCPT, DNS did not answer in `dns.timeout` (`spf.temperror = "tempfail"`):'
        " the client tries again later, as for any 4xx. Also any result set to `tempfail`,"
        " and a refused result for a recipient one of whose trusted forwarders could not"
        " be checked (DNS): the client may be that forwarder."
    ),
    "UNKNOWN_RECIPIENT": (
        "RCPT, an address in a forwarding domain that is not in the forwarding table."
    ),
    "MOVED_RECIPIENT": (
        "RCPT, a forwarding address deleted with `--moved-to`: the reply names the new"
        " address (RFC 5321 section 3.4); the sender should write there."
    ),
    "SRS_FORGED": (
        "RCPT, a bounce to an SRS address whose signature does not verify: forged, or"
        " signed with a secret no longer in `srs.secrets_file`."
    ),
    "SRS_EXPIRED": "RCPT, a bounce to an SRS address older than `srs.max_age_days`.",
    "SRS_MALFORMED": "RCPT, an address at the SRS domain that looks like SRS but does not parse.",
    "TARGET_PENDING": (
        "RCPT, a forwarding address whose first target has not been confirmed yet: the"
        " confirmation link was mailed to the target ([web.md](web.md)). The client retries;"
        " once the owner confirms, mail goes through."
    ),
    "TARGET_UNCONFIRMED": (
        "RCPT, a forwarding address whose only target was never confirmed before its link"
        " expired (`web.confirm_hours`). The owner must ask again."
    ),
    "TARGET_HELD": (
        "RCPT, mail from an unverified sender (U) for a forwarding address one of whose"
        " targets has held or requeued mail: the whole address waits, every target (the"
        " milter can hold a message only whole; the sender's server keeps it meanwhile)."
        " The client retries; once the admin requeued the held mail and it was delivered,"
        " the mail goes through. Verified (B) mail is not deferred and goes to every target."
    ),
    "SPLIT_TRANSACTION": (
        "RCPT, a recipient whose mail needs another outcome than the recipients already"
        " accepted in this transaction (a bounce to an SRS address travels alone; null-sender"
        " mail kept by a recipient's policy goes with other such recipients only; a copy that"
        " keeps its envelope sender, by the recipient's `rewrite`, does not travel with one"
        " that is rewritten). RFC 5321"
        " section 3.5.3: the client delivers the accepted recipients and sends this one in a"
        " new transaction; nothing is lost, nothing waits."
    ),
    "SRS_REPLY_REFUSED": (
        "End of message, mail to an SRS address that is neither a delivery report nor an"
        " automatic reply (a person's reply, or mail the milter cannot read), when the"
        " forwarded message's sender was not verified (U): it cannot go to that sender, and"
        " the refusal tells the writer so. A reply to a verified (B) message is delivered."
    ),
    "LOOP": (
        "End of message: the message carries more of this forwarder's trace headers"
        " than `milter.loop_limit`: it has been forwarded here in a circle."
    ),
    "STORE_UNAVAILABLE": (
        "Any stage: the store (SQLite file or Redis) did not answer in `store.timeout`."
        " The client retries; the admin looks at the store."
    ),
    "INTERNAL_ERROR": (
        "Any stage: an unexpected error, logged with its traceback. The client retries."
    ),
    "SHUTTING_DOWN": (
        "MAIL FROM while the milter is stopping (SIGTERM): the client retries, and finds"
        " it running again."
    ),
    "BAD_ADDRESS": (
        "MAIL FROM, a sender address the milter cannot make an SRS address of, or one"
        " with octets that are not UTF-8, a control character, or over 1024 octets."
    ),
    "BAD_RECIPIENT": (
        "RCPT, a recipient address with octets that are not UTF-8, a control character,"
        " or over 1024 octets (nothing could look it up or store it)."
    ),
}


def _used(name: str) -> bool:
    pattern = re.compile(rf"\breplies\.{name}\b")
    return any(
        pattern.search(p.read_text(encoding="utf-8"))
        for p in (ROOT / "fwdmilter").rglob("*.py")
        if p.name != "replies.py"
    )


def replies_table() -> str:
    """Every named reply of fwdmilter/replies.py, in the module's order."""
    named = [(n, v) for n, v in vars(replies).items() if isinstance(v, Reply)]
    missing = [n for n, _ in named if n not in REPLY_MEANINGS]
    stale = sorted(set(REPLY_MEANINGS) - {n for n, _ in named})
    if missing or stale:
        raise SystemExit(
            f"gen_docs: replies without a meaning: {missing}; meanings without a reply: {stale}"
        )
    out = ["| reply | when, and what it means for the sender |", "|---|---|"]
    for name, reply in named:
        meaning = REPLY_MEANINGS[name]
        if not _used(name):
            meaning += " *Defined, but not given by this version.*"
        text = str(reply).replace("|", "\\|")
        out.append(f"| `{text}` | {meaning} |")
    return "\n".join(out) + "\n"


# -- the states diagram ---------------------------------------------------------------------


def source_hash(path: Path = STATES_DOT) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def svg_source_hash(path: Path = STATES_SVG) -> str:
    """The hash the picture says it was drawn from ("" if it says none)."""
    m = re.search(r"<!-- rendered from states\.dot sha256=([0-9a-f]{64})", path.read_text())
    return m.group(1) if m else ""


def render_states() -> str:
    """docs/states.dot drawn as SVG by Graphviz, with the source's hash."""
    try:
        done = subprocess.run(
            ["dot", "-Tsvg", str(STATES_DOT)],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise SystemExit("gen_docs: Graphviz's dot is missing: apt-get install graphviz") from None
    svg = done.stdout
    mark = (
        f"<!-- rendered from states.dot sha256={source_hash()} by scripts/gen_docs.py;"
        " do not edit -->\n"
    )
    head, sep, rest = svg.partition("?>\n")
    return head + sep + mark + rest if sep else mark + svg


# -- splicing ---------------------------------------------------------------------------------


def splice(text: str, name: str, content: str) -> str:
    """``text`` with the part between the markers of ``name`` replaced."""
    begin = f"<!-- BEGIN GENERATED {name}: scripts/gen_docs.py writes this part -->\n"
    end = f"<!-- END GENERATED {name} -->"
    start = text.find(begin)
    stop = text.find(end)
    if start < 0 or stop < start:
        raise SystemExit(f"gen_docs: the markers of {name} are missing:\n{begin}{end}")
    return text[: start + len(begin)] + "\n" + content + "\n" + text[stop:]


def outputs() -> dict[Path, str]:
    """Every generated file, as it should be."""
    return {
        CONFIG_DOC: splice(CONFIG_DOC.read_text(encoding="utf-8"), "reference", config_reference()),
        STATES_DOC: splice(STATES_DOC.read_text(encoding="utf-8"), "replies", replies_table()),
        STATES_SVG: render_states(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only say what is stale; exit 1")
    args = parser.parse_args(argv)
    stale = []
    for path, want in outputs().items():
        have = path.read_text(encoding="utf-8") if path.exists() else ""
        if have != want:
            stale.append(path)
            if not args.check:
                path.write_text(want, encoding="utf-8")
    for path in stale:
        verb = "is stale" if args.check else "rewritten"
        print(f"{path.relative_to(ROOT)}: {verb}")
    if stale and args.check:
        print("run: .venv/bin/python scripts/gen_docs.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
