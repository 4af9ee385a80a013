"""The pymilter shell: gathers the facts of a transaction, asks the policy,
applies the decision.

libmilter calls an instance of :class:`FwdMilter` per MTA connection, from
that connection's thread. Only the callbacks and actions used are
negotiated (see :meth:`FwdMilter.negotiate`); connect, HELO, header and body
need no reply (the MTA does not wait), so a transaction costs round trips at
MAIL, each RCPT and end of message only.

Every callback is guarded: a store outage answers 451 (``store.on_error``
may say otherwise where that loses nothing), any other unexpected error is
logged with its traceback and answered 451 4.3.0. Exception text never
reaches the SMTP client.
"""

from __future__ import annotations

import base64
import functools
import logging
import secrets
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

import Milter

from fwdmilter import addr, classify, dsn, logfmt, machine, policy, replies, tcp
from fwdmilter.errors import StoreError, StoreUnavailable
from fwdmilter.replies import Reply
from fwdmilter.states import Forward, HeldEntry, MessageRecord, RcptInfo

if TYPE_CHECKING:
    from fwdmilter.runtime import Runtime

__all__ = ["FwdMilter", "Hooks", "WANTED_ACTIONS", "REQUIRED_ACTIONS"]

log = logging.getLogger(__name__)

#: The modifications the milter makes, and nothing more (smfi_register flags).
WANTED_ACTIONS: Final = (
    Milter.ADDHDRS
    | Milter.CHGHDRS
    | Milter.CHGFROM
    | Milter.ADDRCPT
    | Milter.ADDRCPT_PAR
    | Milter.DELRCPT
    | Milter.QUARANTINE
    | Milter.SETSYMLIST
)

#: The modifications the milter cannot work without, by name: an MTA that
#: does not offer them all would take messages the milter could neither
#: rewrite nor hold (smfi_register flags, as offered at negotiation).
REQUIRED_ACTIONS: Final = (
    (Milter.ADDHDRS, "ADDHDRS"),
    (Milter.CHGHDRS, "CHGHDRS"),
    (Milter.CHGFROM, "CHGFROM"),
    (Milter.ADDRCPT, "ADDRCPT"),
    (Milter.DELRCPT, "DELRCPT"),
    (Milter.QUARANTINE, "QUARANTINE"),
)

# libmilter's answers, typed (pymilter has no type information).
CONTINUE: Final[int] = int(Milter.CONTINUE)
REJECT: Final[int] = int(Milter.REJECT)
TEMPFAIL: Final[int] = int(Milter.TEMPFAIL)
DISCARD: Final[int] = int(Milter.DISCARD)

_MAX_HEADER_BYTES: Final = 256 * 1024
_SRS_REFUSALS: Final = (replies.SRS_FORGED, replies.SRS_EXPIRED, replies.SRS_MALFORMED)
_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz234567"

F = TypeVar("F", bound=Callable[..., Any])


class Hooks(Protocol):
    """What the daemon offers its connections."""

    @property
    def stopping(self) -> bool:
        """True once SIGTERM came: no new connection or transaction."""

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def transaction_started(self) -> None: ...

    def transaction_ended(self) -> None: ...

    def alert(self, entry: HeldEntry) -> None:
        """Send the alert for a new held entry (in the background)."""


def _new_id() -> str:
    # 80 random bits as 16 letters of _ID_ALPHABET (RFC 4648 base32, in lower
    # case): one getrandom() call where 16 secrets.choice() calls made 16.
    return base64.b32encode(secrets.token_bytes(10)).decode("ascii").lower()


def _guarded(stage: str) -> Callable[[F], F]:
    """Answer 451 for whatever a callback did not expect; log it first."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(self: FwdMilter, *args: Any) -> Any:
            try:
                return fn(self, *args)
            except StoreError as exc:
                log.error(
                    "queue_id=%s stage=%s action=tempfail reason=store error=%s",
                    self._queue_id or "NOQUEUE",
                    stage,
                    exc,
                )
                self.rt.metrics.decision(stage, "tempfail")
                return self._reply(replies.STORE_UNAVAILABLE)
            except Exception:
                log.exception(
                    "queue_id=%s stage=%s action=tempfail reason=internal",
                    self._queue_id or "NOQUEUE",
                    stage,
                )
                self.rt.metrics.decision(stage, "tempfail")
                return self._reply(replies.INTERNAL_ERROR)

        return run  # type: ignore[return-value]

    return wrap


def _noreply_guarded(fn: F) -> F:
    """For callbacks the MTA does not wait on: an error spoils the
    transaction, and end of message answers 451."""

    @functools.wraps(fn)
    def run(self: FwdMilter, *args: Any) -> Any:
        try:
            return fn(self, *args)
        except Exception:
            log.exception(
                "queue_id=%s stage=%s reason=internal", self._queue_id or "NOQUEUE", fn.__name__
            )
            self._spoiled = True
            return CONTINUE

    return run  # type: ignore[return-value]


class FwdMilter(Milter.Base):  # type: ignore[misc]
    """One MTA connection."""

    def __init__(self, rt: Runtime, server: Hooks | None = None) -> None:
        super().__init__()
        self.rt = rt
        self._server = server
        self._client_ip = ""
        self._client_name = ""
        self._helo = ""
        self._local = False
        self._trusted = False
        self._in_transaction = False
        # Per connection: the recipients' trusted forwarder domains checked,
        # (domain, HELO name) -> SPF result (SPFChecker.forwarder).
        self._forwarder_results: dict[tuple[str, str], str] = {}
        self._reset()
        if server is not None:
            server.connection_opened()

    # -- transaction state --------------------------------------------------

    def _reset(self) -> None:
        self._queue_id = ""
        self._mail: policy.MailDecision | None = None
        self._rcpts: list[policy.RcptDecision] = []
        self._refused: list[str] = []
        self._trace: list[str] = []
        self._ar_index = 0
        self._own_ar: list[int] = []
        self._collect = False
        self._headers: list[bytes] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._spoiled = False
        self._permits: bool | None = None

    def _begin_transaction(self) -> None:
        if not self._in_transaction and self._server is not None:
            self._server.transaction_started()
        self._in_transaction = True

    def _end_transaction(self) -> None:
        if self._in_transaction and self._server is not None:
            self._server.transaction_ended()
        self._in_transaction = False

    def _reply(self, reply: Reply) -> int:
        self.setreply(str(reply.code), reply.status, reply.milter_text())
        return REJECT if reply.permanent else TEMPFAIL

    def _macro(self, name: str) -> str:
        value = self.getsymval(name)
        return str(value) if value else ""

    def _client(self) -> str:
        # As Postfix logs it: "unknown" for a client without a verified name
        # (libmilter then passes the address literal as the name).
        name = self._client_name
        if not name or name.startswith("["):
            name = "unknown"
        return f"{name}[{self._client_ip or 'local'}]"

    # -- negotiation ---------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        """Ask for the callbacks we use (the decorators below say which), the
        actions we use, and the macros we read at each stage."""
        if self._server is not None and self._server.stopping:
            # Shutting down: the MTA treats this milter as unavailable for
            # the connection (milter_default_action) at once.
            return REJECT
        offered = opts[0]
        missing = [name for flag, name in REQUIRED_ACTIONS if not offered & flag]
        if missing:
            # Without these the milter could accept mail it can neither
            # rewrite nor hold: refuse the connection, and the MTA's
            # milter_default_action decides (tempfail, by default).
            log.error(
                "negotiate: refused reason=%s missing=%s",
                logfmt.value("the MTA does not offer the actions the milter needs"),
                ",".join(missing),
            )
            return REJECT
        rc: int = super().negotiate(opts)
        if rc != CONTINUE:
            return rc
        opts[0] = self._actions = offered & WANTED_ACTIONS
        if tcp.wants_data_reply(self.rt.cfg.milter.socket):
            # Over TCP, answer DATA so that the MTA's next write does not
            # wait for a delayed ACK (fwdmilter.tcp, point 2).
            opts[1] = self._protocol = opts[1] & ~Milter.P_NODATA
        if self._actions & Milter.SETSYMLIST:
            # Sendmail names the queue id "i" and the SASL login {auth_authen},
            # as Postfix does; both send them at MAIL FROM when asked.
            # (pymilter 1.0.5's Base.setsymlist hands the C call bytes where
            # it wants str, so the context is called directly.)
            try:
                self._ctx.setsymlist(Milter.M_ENVFROM, "i {auth_authen}")
                self._ctx.setsymlist(Milter.M_EOM, "i")
            except Exception:
                log.warning(
                    "negotiate: setsymlist failed; using the MTA's default macros", exc_info=True
                )
        return CONTINUE

    # -- callbacks -----------------------------------------------------------

    @Milter.noreply  # type: ignore[untyped-decorator]
    @_noreply_guarded
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        self._client_name = hostname or ""
        if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
            self._client_ip = str(hostaddr[0])
        else:
            # Local submission (a unix socket, or Postfix's non-SMTP mail):
            # there is no client address for SPF to judge.
            self._local = True
        self._trusted = self._local or policy.is_trusted(self._client_ip, self.rt.settings.trusted)
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    @_noreply_guarded
    def hello(self, hostname: str) -> int:
        self._helo = hostname or ""
        return CONTINUE

    @_guarded("mail")
    def envfrom(self, mailfrom: str, *params: str) -> int:
        self._reset()
        self._end_transaction()
        if self._server is not None and self._server.stopping:
            return self._reply(replies.SHUTTING_DOWN)
        self._begin_transaction()
        rt = self.rt
        self._queue_id = self._macro("i")
        sender = addr.strip_brackets(mailfrom)
        problem = addr.problem(sender)
        if problem is not None:
            # Before SPF and the store, which could not take it: a 5xx now,
            # never a 451 that the client would retry for ever.
            self._end_transaction()
            self._log_decision(
                "mail",
                "reject",
                reply=replies.BAD_ADDRESS,
                extra={"problem": problem, "address": addr.printable(sender)},
            )
            rt.metrics.decision("mail", "reject")
            return self._reply(replies.BAD_ADDRESS)
        auth_user = self._macro("{auth_authen}")
        spf_outcome: policy.SPFOutcome | None = None
        if not (self._trusted or auth_user):
            started = time.monotonic()
            spf_outcome = rt.spf.check(self._client_ip, sender, self._helo)
            rt.metrics.dns_latency(time.monotonic() - started)
            rt.metrics.spf_result(spf_outcome.result)
        self._mail = mail = policy.decide_mail(
            rt.settings,
            sender,
            self._helo,
            spf_outcome,
            auth_user=auth_user,
            client_ip=self._client_ip or "local",
            now=time.time(),
        )
        if mail.reply is not None:
            self._end_transaction()
            self._log_decision(
                "mail", "reject" if mail.reply.permanent else "tempfail", reply=mail.reply
            )
            rt.metrics.decision("mail", "reject" if mail.reply.permanent else "tempfail")
            return self._reply(mail.reply)
        return CONTINUE

    @_guarded("rcpt")
    def envrcpt(self, to: str, *params: str) -> int:
        mail = self._mail
        if mail is None:  # the MTA skipped MAIL FROM: nothing sensible to do
            return self._reply(replies.INTERNAL_ERROR)
        rt = self.rt
        bare = addr.strip_brackets(to)
        problem = addr.problem(bare)
        if problem is not None:
            self._log_decision(
                "rcpt",
                "reject",
                rcpt=addr.printable(bare),
                reply=replies.BAD_RECIPIENT,
                extra={"problem": problem},
            )
            rt.metrics.decision("rcpt", "reject")
            return self._reply(replies.BAD_RECIPIENT)
        s = rt.settings
        kind = policy.classify_rcpt(s, bare)
        if kind is policy.RcptKind.SRS:
            decision = policy.decide_rcpt_srs(s, to, bare, params, time.time(), mail)
            if decision.srs is not None:
                rt.metrics.srs("reverse")
            elif decision.reply in _SRS_REFUSALS:
                rt.metrics.srs("refused")
        elif kind is policy.RcptKind.FORWARDING:
            info = self._rcpt_info(bare)
            fwd = info.forward
            trust = self._trust(mail, fwd)
            permits = policy.needs_sender_permits(s, mail, fwd) and self._sender_permits_us(mail)
            decision = policy.decide_rcpt_forwarding(
                s, to, info, mail, params, now=time.time(), trust=trust, sender_permits_us=permits
            )
        else:
            decision = policy.decide_rcpt_other(s, to, mail, params)
        if decision.reply is None:
            decision = policy.decide_rcpt_split(self._rcpts, decision)
        if decision.reply is not None:
            self._refused.append(bare)
            action = "reject" if decision.reply.permanent else "tempfail"
            self._log_decision("rcpt", action, rcpt=bare, reply=decision.reply)
            rt.metrics.decision("rcpt", action)
            return self._reply(decision.reply)
        if decision.spf_note:
            # Mail the global SPF action refuses, let in for this recipient.
            self._log_decision("rcpt", "accept", rcpt=bare, extra={"note": decision.spf_note})
        self._rcpts.append(decision)
        if decision.action == "reverse":
            self._collect = True  # the mail is classified at end of message
        return CONTINUE

    def _trust(self, mail: policy.MailDecision, fwd: Forward | None) -> policy.Trust | None:
        """Which of a recipient's trusted forwarders the client is, when that
        matters (DNS for the domains among them, kept for the connection)."""
        started = time.monotonic()
        trust = self.rt.spf.recipient_trust(
            self.rt.settings, mail, fwd, self._client_ip, self._helo, self._forwarder_results
        )
        if trust is not None:
            self.rt.metrics.dns_latency(time.monotonic() - started)
        return trust

    def _rcpt_info(self, bare: str) -> RcptInfo:
        started = time.monotonic()
        try:
            info = self.rt.store.rcpt_info([addr.key(bare)])[0]
        finally:
            self.rt.metrics.store_latency("rcpt_info", time.monotonic() - started)
        return info

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def data(self) -> int:
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    @_noreply_guarded
    def header(self, name: str, value: str) -> int:
        lname = name.lower()
        if lname == policy.TRACE_HEADER.lower():
            self._trace.append(value)
        elif lname == policy.AUTH_RESULTS_HEADER.lower():
            self._ar_index += 1
            if policy.authserv_id(value) == self.rt.settings.hostname.lower():
                self._own_ar.append(self._ar_index)
        if self._collect and self._header_bytes < _MAX_HEADER_BYTES:
            line = f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
            self._headers.append(line)
            self._header_bytes += len(line)
        return CONTINUE

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def eoh(self) -> int:
        return CONTINUE

    @Milter.noreply  # type: ignore[untyped-decorator]
    @_noreply_guarded
    def body(self, chunk: bytes) -> int:
        if self._collect and self._body_bytes < dsn.MAX_PARSE:
            self._body.append(chunk)
            self._body_bytes += len(chunk)
        return CONTINUE

    @Milter.nocallback  # type: ignore[untyped-decorator]
    def unknown(self, cmd: str) -> int:
        return CONTINUE

    def eom(self) -> int:
        try:
            return self._eom()
        finally:
            self._end_transaction()

    @_guarded("eom")
    def _eom(self) -> int:
        mail = self._mail
        if mail is None or self._spoiled:
            return self._reply(replies.INTERNAL_ERROR)
        rt = self.rt
        self._queue_id = self._macro("i") or self._queue_id
        now = time.time()
        records: dict[str, list[MessageRecord]] = {}
        bounce: classify.Classification | None = None
        if any(r.action == "reverse" for r in self._rcpts):
            for r in self._rcpts:
                if r.action == "reverse":
                    key = addr.key(r.rcpt)
                    records[key] = self.rt.store.messages(key)
            raw = b"".join(self._headers) + b"\r\n" + b"".join(self._body)
            bounce = classify.classify(raw, null_sender=mail.sender == "")
        tx = policy.Transaction(
            mail=mail,
            rcpts=tuple(self._rcpts),
            queue_id=self._queue_id,
            msg_id=_new_id(),
            now=now,
            trace_values=tuple(self._trace),
            own_auth_results=tuple(self._own_ar),
            records=records,
            bounce=bounce,
        )
        decision = policy.decide_eom(rt.settings, tx)
        alerts = self._write_store(decision, now)
        try:
            rc = self._apply(decision)
        except Exception:
            # The MTA did not take a change (a lost connection, an action
            # it refused): no entry may stay for a message it did not hold.
            self._undo_holds(decision)
            raise
        if self._server is not None:
            for entry in alerts:  # only now: end of message went through
                self._server.alert(entry)
        return rc

    def _sender_permits_us(self, mail: policy.MailDecision) -> bool:
        """True if the sender's SPF passes every one of srs.outbound_ips
        ("when-needed" rewriting); False without them. Once per transaction."""
        if self._permits is None:
            self._permits = self.rt.spf.sender_permits(mail, self.rt.cfg.srs.outbound_ips)
        return self._permits

    def _write_store(self, d: policy.EomDecision, now: float) -> list[HeldEntry]:
        """Store writes come before any change to the message: if they fail,
        the MTA gets 451 and keeps the message, and the client (or Postfix's
        bounce daemon) tries again. The effects come in machine.EFFECT_ORDER:
        held entries last, so that a failure never leaves an entry for a
        bounce that was not held. Returns the entries to alert about."""
        rt = self.rt
        store = rt.store
        queue_id = self._queue_id or "NOQUEUE"
        alerts: list[HeldEntry] = []
        started = time.monotonic()
        try:
            for effect in machine.ordered(d.effects):
                if isinstance(effect, machine.Release):
                    if store.release(effect.target, effect.entry_id):
                        rt.metrics.held("released")
                        self._log_entry("released", effect.target, effect.entry_id)
                elif isinstance(effect, machine.SetRecordState):
                    store.set_message_state(effect.srs, effect.record_id, effect.state)
                elif isinstance(effect, machine.WriteRecords):
                    short = self._mail is not None and self._mail.srs_short
                    self._write_records(effect.records, required=short)
                elif isinstance(effect, machine.Rehold):
                    if store.rehold(
                        effect.target,
                        effect.entry_id,
                        queue_id,
                        rt.settings.instance,
                        effect.reason,
                        now,
                    ):
                        rt.metrics.held("held")
                        self._log_entry("reheld", effect.target, effect.entry_id, effect.reason)
                        held = store.get_held(effect.target, effect.entry_id)
                        if held is not None:
                            alerts.append(held)
                elif store.hold(effect.entry):
                    entry = effect.entry
                    self._log_entry(
                        "held" if entry.state == "H" else "kept",
                        entry.target,
                        entry.entry_id,
                        entry.reason,
                    )
                    if entry.state == "H":
                        rt.metrics.held("held")
                        if entry.target != machine.UNKNOWN_TARGET or rt.cfg.held.alert_to:
                            alerts.append(entry)
        finally:
            rt.metrics.store_latency("eom", time.monotonic() - started)
        return alerts

    def _write_records(self, records: tuple[MessageRecord, ...], *, required: bool) -> None:
        rt = self.rt
        # A record outlives its SRS address's validity (the day stamp is good
        # through max_age_days, and clocks differ): a bounce that the SRS
        # check still lets in always finds its record.
        ttl = (rt.cfg.srs.max_age_days + 2) * 86400
        try:
            rt.store.record_messages(records, ttl)
        except StoreUnavailable:
            if rt.cfg.store.on_error != "accept" or required:
                # A short SRS form is reversed through its records alone:
                # without them, 451, and the client tries again.
                raise
            # Forwarding without a record loses nothing: a bounce that
            # finds no record is held, never sent.
            log.warning(
                "queue_id=%s store=unavailable records=skipped", self._queue_id or "NOQUEUE"
            )

    def _undo_holds(self, d: policy.EomDecision) -> None:
        for entry in d.holds:
            try:
                if self.rt.store.drop(entry.target, entry.entry_id):
                    self._log_entry("dropped", entry.target, entry.entry_id, "not held by the MTA")
            except StoreError:
                log.exception(
                    "queue_id=%s entry=undo-failed target=%s",
                    self._queue_id or "NOQUEUE",
                    logfmt.value(entry.target),
                )

    def _log_entry(self, what: str, target: str, entry_id: str, reason: str = "") -> None:
        items = [("entry", what), ("target", target), ("id", entry_id)]
        if reason:
            items.append(("reason", reason))
        log.info("queue_id=%s %s", self._queue_id or "NOQUEUE", logfmt.pairs(items))

    def _apply(self, d: policy.EomDecision) -> int:
        rt = self.rt
        extra = dict(d.log)
        if d.reply is not None:
            action = "reject" if d.reply.permanent else "tempfail"
            self._log_decision(
                "eom", d.action if "action" in extra else action, reply=d.reply, extra=extra
            )
            rt.metrics.decision("eom", action)
            return self._reply(d.reply)
        for name, index in d.del_headers:
            self.chgheader(name, index, "")
        for name, value in reversed(d.add_headers):
            self.addheader(name, value, 0)
        if d.quarantine:
            self.quarantine(d.quarantine)
            self._log_decision("eom", d.action, extra=extra)
            rt.metrics.decision("eom", "hold")
            return CONTINUE
        if d.discard:
            self._log_decision("eom", "discard", extra=extra)
            rt.metrics.decision("eom", "discard")
            return DISCARD
        if d.chgfrom is not None:
            self.chgfrom(d.chgfrom)
            rt.metrics.srs("forward")
        for rcpt in d.delrcpt:
            self.delrcpt(rcpt)
        can_params = bool(self._actions & Milter.ADDRCPT_PAR)
        for rcpt, params in d.addrcpt:
            if params and can_params:
                self.addrcpt(rcpt, " ".join(params))
            else:
                self.addrcpt(rcpt)
        self._log_decision("eom", d.action, extra=extra, targets=[r for r, _ in d.addrcpt])
        rt.metrics.decision("eom", d.action)
        return CONTINUE

    def abort(self) -> int:
        self._reset()
        self._end_transaction()
        return CONTINUE

    def close(self) -> int:
        self._end_transaction()
        if self._server is not None:
            self._server.connection_closed()
        return CONTINUE

    # -- logging -------------------------------------------------------------

    def _log_decision(
        self,
        stage: str,
        action: str,
        *,
        rcpt: str = "",
        reply: Reply | None = None,
        extra: dict[str, str] | None = None,
        targets: list[str] | None = None,
    ) -> None:
        mail = self._mail
        items = [
            ("client", self._client()),
            ("helo", f"<{self._helo}>"),
            ("sender", f"<{mail.sender if mail else ''}>"),
        ]
        if rcpt:
            items.append(("rcpt", f"<{rcpt}>"))
        elif self._rcpts:
            items.append(
                ("rcpts", ",".join(f"<{addr.strip_brackets(r.rcpt)}>" for r in self._rcpts))
            )
        if targets:
            items.append(("to", ",".join(targets)))
        if mail is not None:
            items.append(("spf", mail.spf.result if mail.spf else "skipped"))
            items.append(("state", mail.state))
        items += [("stage", stage), ("action", action)]
        items += [(k, v) for k, v in (extra or {}).items() if k not in ("action", "state")]
        if reply is not None:
            items.append(("reply", str(reply)))
        parts = [f"queue_id={self._queue_id or 'NOQUEUE'}", logfmt.pairs(items)]
        log.info("%s", " ".join(parts))
