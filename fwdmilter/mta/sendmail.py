"""Sendmail's quarantine, read from its queue files.

When the milter quarantines a message (``smfi_quarantine``), Sendmail
writes its control file as ``hf<ID>`` instead of ``qf<ID>``, with a ``q``
record holding the reason, and never delivers it; ``mailq -qQ`` lists it.
The message itself is in the data file ``df<ID>`` (the body) and in the
control file's ``H`` records (the headers).

This adapter reads and removes those files itself, with Sendmail's own
locking, rather than running Sendmail's tools:

- Sendmail has no command that deletes a queued message (``qtool.pl``, in
  its contrib folder, removes the files as done here);
- ``mailq`` prints for people (reasons and addresses cut to the width of a
  terminal);
- every ``sendmail`` invocation first resolves the host's own name, and
  sleeps a minute when that fails.

The control file format (Sendmail's op.me, "The Queue"; the code is
``queueup``/``readqf`` in queue.c) is one record per line, a letter and its
value; lines starting with a space or tab continue the previous record; a
``.`` line ends the file. The records used here:

    V  format version (8 for Sendmail 8.12 to 8.17)
    T  arrival time (Unix time)
    q  quarantine reason
    S  envelope sender ("<>" for the null sender)
    R  a recipient: "R" flags ":" address
    $  a macro saved with the message: "$" name value, name a letter or {name}
    d  the folder of the data file, when it is not this queue folder
    H  a header: "H" [?flags?] name ":" value

A header's ``?flags?`` names mailer flags: Sendmail writes the header only
for mailers having one of them (``?P?Return-Path`` is for local delivery
alone). ``?$x?`` or ``?${name}?`` makes it depend on a macro being set.
Headers Sendmail itself adds from its configuration keep their macros
unexpanded: a byte 0201 followed by the macro's name (a letter, or a byte
from 0240 up for a long name, which only the running Sendmail can resolve);
bytes that came from the message itself and could be taken for such codes
(0200-0237 and 0377) are escaped with a 0377 before them
(``quote_internal_chars`` in Sendmail's util.c).

Locking: Sendmail holds ``flock(2)`` on a control file while it works on it
(exclusive) or lists it (shared). :meth:`Sendmail.delete` takes the
exclusive lock without blocking, trying for two seconds: if Sendmail keeps
the file, deletion fails and says so, and is tried again later. The control file goes before the
data file, so that an interruption leaves at worst a data file Sendmail
ignores, never a control file whose data is gone (Sendmail would set that
one aside as lost, ``Qf``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fwdmilter.errors import MTAError
from fwdmilter.mta.base import MTA, QueuedMessage

__all__ = ["Sendmail", "ControlFile", "Header", "parse_control_file", "ESMTP_MAILER_FLAGS"]

log = logging.getLogger(__name__)

#: The flags of Sendmail's esmtp mailer (cf/mailer/smtp.m4: "mDFMuXa"), by
#: which a held message goes out when it is requeued: headers flagged for
#: other mailers only (Return-Path, Full-Name) are left out of ``read()``.
ESMTP_MAILER_FLAGS: Final = frozenset("mDFMuXa")

#: Sendmail queue ids: 8.12 and later make 14 characters (base-60 time and
#: sequence, then the process id); longer with longer process ids.
_QUEUE_ID: Final = re.compile(r"\A[0-9A-Za-z]{8,40}\Z")
_METAQUOTE: Final = 0o377
_MACROEXPAND: Final = 0o201
_RECIPIENT: Final = re.compile(rb"\A([A-Za-z]*):(.*)\Z", re.DOTALL)
_HEADER_FLAGS: Final = re.compile(rb"\A\?([^?]*)\?")
_MACRO_NAME: Final = re.compile(rb"\A\$(\{[^}]*\}|.)")
_MAX_CONTROL_FILE: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Header:
    """One ``H`` record: its condition and the raw ``name: value`` bytes
    (continuation lines included, Sendmail's internal bytes as stored)."""

    flags: str  # mailer flags of ?flags?, "" for none
    macro: str  # the macro of ?$x? / ?${name}?, "" for none
    text: bytes


@dataclass(frozen=True, slots=True)
class ControlFile:
    """What a control file (qf or hf) says about one message."""

    queue_id: str
    version: int = 0
    arrival: float = 0.0
    quarantine: str = ""
    sender: str = ""
    recipients: tuple[str, ...] = ()
    macros: dict[str, str] = field(default_factory=dict)
    data_dir: str = ""
    headers: tuple[Header, ...] = ()

    def header_block(self, mailer_flags: frozenset[str] = ESMTP_MAILER_FLAGS) -> bytes:
        """The headers as a mailer with ``mailer_flags`` would get them,
        one per line ending in LF: conditional headers left out unless
        their condition holds, Sendmail's escapes undone, macros expanded
        from what the control file saved. A header with a macro the file
        cannot resolve is left out (it is one Sendmail made, never one the
        message came with)."""
        out: list[bytes] = []
        for h in self.headers:
            if h.flags and not (set(h.flags) & mailer_flags):
                continue
            if h.macro and not self.macros.get(h.macro):
                continue
            text = _unescape(h.text, self._macro_value)
            if text is None:
                log.debug("queue_id=%s header=skipped reason=unknown-macro", self.queue_id)
                continue
            out.append(text.replace(b"\r\n", b"\n") + b"\n")
        return b"".join(out)

    def _macro_value(self, name: str) -> str | None:
        if name == "g":  # the sender, as in "Return-Path: <$g>" ("" for <>)
            return self.sender
        if name == "i":
            return self.queue_id
        return self.macros.get(name)


def _records(data: bytes) -> Iterator[bytes]:
    """The records of a control file, continuation lines joined (with LF)."""
    current: bytes | None = None
    for raw in data.split(b"\n"):
        line = raw.removesuffix(b"\r")
        if line[:1] in (b" ", b"\t") and current is not None:
            current += b"\n" + line
            continue
        if current is not None:
            yield current
        if line == b".":
            return
        current = line if line else None
    if current is not None:
        yield current


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _macro_name(raw: bytes) -> str:
    """A macro's name as written after "$": a letter, or "{name}" braces and all."""
    return _text(raw)


def parse_control_file(queue_id: str, data: bytes) -> ControlFile:
    """Parse a qf/hf file's bytes; MTAError if they are not a control file."""
    version = 0
    arrival = 0.0
    quarantine = ""
    sender = ""
    data_dir = ""
    recipients: list[str] = []
    macros: dict[str, str] = {}
    headers: list[Header] = []
    seen_any = False
    for record in _records(data):
        kind, value = record[:1], record[1:]
        seen_any = True
        if kind == b"V":
            version = _int(value, "V", queue_id)
        elif kind == b"T":
            arrival = float(_int(value, "T", queue_id))
        elif kind == b"q":
            quarantine = _text(value).replace("\n", " ")
        elif kind == b"S":
            sender = _text(value).strip()
            if sender.startswith("<") and sender.endswith(">"):
                sender = sender[1:-1]
        elif kind == b"R":
            m = _RECIPIENT.match(value) if version > 0 else None
            address = _text(m.group(2) if m else value).strip()
            if address.startswith("<") and address.endswith(">"):
                address = address[1:-1]
            recipients.append(address)
        elif kind == b"$":
            m = _MACRO_NAME.match(record)
            if m:
                macros[_macro_name(m.group(1))] = _text(record[m.end() :])
        elif kind == b"d":
            data_dir = _text(value)
        elif kind == b"H":
            headers.append(_header(value))
    if not seen_any or version == 0:
        raise MTAError(f"{queue_id}: not a Sendmail control file (no version record)")
    return ControlFile(
        queue_id=queue_id,
        version=version,
        arrival=arrival,
        quarantine=quarantine,
        sender=sender,
        recipients=tuple(recipients),
        macros=macros,
        data_dir=data_dir,
        headers=tuple(headers),
    )


def _int(value: bytes, record: str, queue_id: str) -> int:
    try:
        return int(value.strip() or b"0")
    except ValueError:
        raise MTAError(f"{queue_id}: record {record} is not a number: {value[:40]!r}") from None


def _header(value: bytes) -> Header:
    m = _HEADER_FLAGS.match(value)
    if not m:
        return Header("", "", value)
    cond, text = m.group(1), value[m.end() :]
    if cond.startswith(b"$"):
        return Header("", _macro_name(cond[1:]), text)
    return Header(_text(cond), "", text)


def _unescape(raw: bytes, lookup: Callable[[str], str | None]) -> bytes | None:
    """Undo Sendmail's quoting of internal bytes; expand macro references
    with ``lookup(name) -> value | None``. None if a macro (or any other
    internal code: conditionals, long names) cannot be resolved."""
    out = bytearray()
    i = 0
    n = len(raw)
    while i < n:
        b = raw[i]
        if b == _METAQUOTE and i + 1 < n:
            out.append(raw[i + 1])
            i += 2
            continue
        if b == _MACROEXPAND and i + 1 < n and raw[i + 1] < 0o200:
            value = lookup(chr(raw[i + 1]))
            if value is None:
                return None
            out += value.encode("utf-8", "surrogateescape")
            i += 2
            continue
        if 0o200 <= b < 0o240:
            return None  # an unquoted internal code: not text
        out.append(b)
        i += 1
    return bytes(out)


class Sendmail(MTA):
    """One Sendmail instance's quarantine, in its queue folder(s).

    ``queue_dir`` is Sendmail's QueueDirectory: a folder, or a pattern
    such as ``/var/spool/mqueue/q*`` for several; a folder with ``qf`` and
    ``df`` subfolders keeps its control and data files there, as Sendmail
    does. ``cf`` is only checked: if it names another QueueDirectory, the
    mismatch is logged, since ``held()`` would then find nothing.
    """

    name = "sendmail"

    def __init__(
        self, queue_dir: str = "/var/spool/mqueue", cf: str = "", lock_wait: float = 2.0
    ) -> None:
        self.queue_dir = queue_dir
        self.cf = cf
        #: Seconds delete() tries for the lock: a quarantined message is
        #: locked only while mailq lists it; Sendmail never delivers it.
        self.lock_wait = lock_wait
        self._checked_cf = False

    # -- the queue folders ---------------------------------------------------------

    def _queue_dirs(self) -> list[Path]:
        # Sendmail takes a wildcard in the last part only (".../mqueue/q*").
        pattern = Path(self.queue_dir.rstrip("/") or "/")
        if any(c in pattern.name for c in "*?["):
            dirs = sorted(p for p in pattern.parent.glob(pattern.name) if p.is_dir())
        else:
            dirs = [pattern] if pattern.is_dir() else []
        if not dirs:
            raise MTAError(
                f"mta.sendmail_queue_dir: {self.queue_dir} is not a folder (or matches none)"
            )
        self._check_cf()
        return dirs

    def _check_cf(self) -> None:
        if self._checked_cf or not self.cf:
            return
        self._checked_cf = True
        try:
            with Path(self.cf).open("rb") as f:
                for line in f:
                    if line.startswith(b"O QueueDirectory="):
                        named = line.split(b"=", 1)[1].strip().decode("utf-8", "replace")
                        if named.rstrip("/") != self.queue_dir.rstrip("/"):
                            log.warning(
                                "mta.sendmail_queue_dir=%s but %s says QueueDirectory=%s",
                                self.queue_dir,
                                self.cf,
                                named,
                            )
                        return
        except OSError as exc:
            log.debug("cannot read %s to check its QueueDirectory: %s", self.cf, exc)

    @staticmethod
    def _control_dir(qdir: Path) -> Path:
        sub = qdir / "qf"
        return sub if sub.is_dir() else qdir

    @staticmethod
    def _data_dir(qdir: Path) -> Path:
        sub = qdir / "df"
        return sub if sub.is_dir() else qdir

    @staticmethod
    def _transcript_dir(qdir: Path) -> Path:
        sub = qdir / "xf"
        return sub if sub.is_dir() else qdir

    @staticmethod
    def _check_id(queue_id: str) -> None:
        if not _QUEUE_ID.match(queue_id):
            raise MTAError(f"{queue_id!r} is not a Sendmail queue id")

    def _find(self, queue_id: str) -> tuple[Path, Path] | None:
        """(queue folder, hf path) of a quarantined message, or None."""
        for qdir in self._queue_dirs():
            path = self._control_dir(qdir) / f"hf{queue_id}"
            if path.exists():
                return qdir, path
        return None

    def _data_file(self, qdir: Path, control: ControlFile) -> Path:
        if control.data_dir:
            other = Path(control.data_dir)
            if not other.is_absolute():
                other = qdir.parent / other
            return self._data_dir(other) / f"df{control.queue_id}"
        return self._data_dir(qdir) / f"df{control.queue_id}"

    @staticmethod
    def _read_control(path: Path, queue_id: str) -> ControlFile:
        with path.open("rb") as f:
            # A shared lock, as mailq takes: Sendmail rewrites a control
            # file by renaming a new one over it, so an open file stays
            # whole; the lock only keeps us from reading one it is writing.
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                raise MTAError(f"{queue_id}: Sendmail is working on it; try again") from None
            data = f.read(_MAX_CONTROL_FILE)
        return parse_control_file(queue_id, data)

    # -- the contract ---------------------------------------------------------------

    def held(self) -> list[QueuedMessage]:
        return self._listed(("hf",))

    def queued(self) -> list[QueuedMessage]:
        # A qf file is a message Sendmail will deliver (or is delivering);
        # an hf file a quarantined one. Both go when the message is done.
        return self._listed(("qf", "hf"))

    def _listed(self, kinds: tuple[str, ...]) -> list[QueuedMessage]:
        held: list[QueuedMessage] = []
        for qdir in self._queue_dirs():
            try:
                names = sorted(p.name for p in self._control_dir(qdir).iterdir())
            except OSError as exc:
                raise MTAError(f"cannot list {qdir}: {exc.strerror}") from None
            for name in names:
                if name[:2] not in kinds or not _QUEUE_ID.match(name[2:]):
                    continue
                queue_id = name[2:]
                try:
                    control = self._read_control(self._control_dir(qdir) / name, queue_id)
                except FileNotFoundError:
                    continue  # deleted or released while we looked
                except MTAError as exc:
                    log.warning("queue_id=%s sendmail-queue=unreadable error=%s", queue_id, exc)
                    continue
                try:
                    size = self._data_file(qdir, control).stat().st_size
                except OSError:
                    size = 0
                held.append(
                    QueuedMessage(
                        queue_id=queue_id,
                        sender=control.sender,
                        recipients=control.recipients,
                        arrival=control.arrival,
                        size=size,
                        reason=control.quarantine,
                        extra={"queue_dir": str(qdir)},
                        queue="hold" if name.startswith("hf") else "queue",
                    )
                )
        return held

    def is_held(self, queue_id: str) -> bool:
        self._check_id(queue_id)
        return self._find(queue_id) is not None

    def read(self, queue_id: str) -> bytes:
        self._check_id(queue_id)
        found = self._find(queue_id)
        if found is None:
            raise MTAError(f"{queue_id} is not quarantined in {self.queue_dir}")
        qdir, path = found
        try:
            control = self._read_control(path, queue_id)
            body = self._data_file(qdir, control).read_bytes()
        except FileNotFoundError as exc:
            raise MTAError(f"{queue_id}: {exc.filename} is gone") from None
        except OSError as exc:
            raise MTAError(f"{queue_id}: cannot read the queue files: {exc}") from None
        return control.header_block() + b"\n" + body

    def _lock(self, fd: int, queue_id: str, path: Path) -> None:
        """Sendmail's exclusive lock on a control file, tried for ``lock_wait``
        seconds, never waited on: a blocking flock would hang fwdctl behind a
        stuck Sendmail process."""
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise MTAError(f"{queue_id}: cannot lock {path}: {exc.strerror}") from None
                if time.monotonic() >= deadline:
                    raise MTAError(
                        f"{queue_id}: Sendmail is working on it (the queue file is locked); "
                        "try again"
                    ) from None
                time.sleep(0.1)
            else:
                return

    def delete(self, queue_id: str) -> bool:
        self._check_id(queue_id)
        found = self._find(queue_id)
        if found is None:
            log.info("queue_id=%s sendmail-queue=absent", queue_id)
            return False
        qdir, path = found
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            log.info("queue_id=%s sendmail-queue=absent", queue_id)
            return False
        except OSError as exc:
            raise MTAError(f"{queue_id}: cannot open {path}: {exc.strerror}") from None
        try:
            self._lock(fd, queue_id, path)
            # Still the file we opened? Sendmail may have released it (hf
            # renamed to qf) between the lookup and the lock.
            try:
                same = path.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                log.info("queue_id=%s sendmail-queue=absent (moved meanwhile)", queue_id)
                return False
            data = os.read(fd, _MAX_CONTROL_FILE)
            control = parse_control_file(queue_id, data)
            data_file = self._data_file(qdir, control)
            path.unlink()
            for leftover in (data_file, self._transcript_dir(qdir) / f"xf{queue_id}"):
                try:
                    leftover.unlink(missing_ok=True)
                except OSError as exc:
                    log.warning("queue_id=%s cannot remove %s: %s", queue_id, leftover, exc)
        finally:
            os.close(fd)
        log.info("queue_id=%s sendmail-queue=deleted", queue_id)
        return True
